# Golden values for securefed's stratified Cox model (tests/core_stats/test_cox_golden.py).
# Run from the repository root:  Rscript tests/golden/cox/make_golden.R
# Data: the survival package's lung, veteran and colon, complete cases of the
# columns used, with a site column: lung's institution (inst); for veteran and
# colon, which ship no centre, site = 1 + (id %% k) (a fixed, documented split).
# Factors are written as text, so R codes them by sorted level, as a CSV reader must.
suppressPackageStartupMessages({library(survival); library(jsonlite)})
out_dir <- "tests/golden/cox"

lung_d <- na.omit(lung[, c("inst", "time", "status", "age", "sex", "ph.ecog")])
lung_d$site <- paste0("inst", lung_d$inst)
vet <- veteran
vet$id <- seq_len(nrow(vet))
vet$site <- paste0("s", 1 + vet$id %% 4)
vet$celltype <- as.character(vet$celltype)  # a CSV carries no level order
col <- na.omit(colon[colon$etype == 2, c("id", "time", "status", "rx", "sex", "age", "nodes")])
col$site <- paste0("c", 1 + col$id %% 5)
col$rx <- as.character(col$rx)

lung_na <- lung[!is.na(lung$inst), c("inst", "time", "status", "age", "sex", "wt.loss")]
lung_na$site <- paste0("inst", lung_na$inst)  # wt.loss has missing values: na.omit drops them

cases <- list(
  lung = list(data = lung_d, rhs = "age + sex + ph.ecog", file = "lung.csv"),
  veteran = list(data = vet, rhs = "trt + karno + age + celltype", file = "veteran.csv"),
  colon = list(data = col, rhs = "rx + sex + age + nodes", file = "colon.csv"),
  lung_missing = list(data = lung_na, rhs = "age + sex + wt.loss", file = "lung_missing.csv"),
  veteran_terms = list(data = vet, rhs = "trt * karno + log(age) + factor(prior) + celltype",
                       file = "veteran.csv")
)
golden <- list(R = R.version.string, survival = as.character(packageVersion("survival")))
for (name in names(cases)) {
  case <- cases[[name]]
  d <- case$data
  write.csv(d[, setdiff(names(d), c("id", "inst"))], file.path(out_dir, case$file),
            row.names = FALSE)
  for (ties in c("efron", "breslow")) {
    f <- as.formula(paste("Surv(time, status) ~", case$rhs, "+ strata(site)"))
    fit <- coxph(f, data = d, ties = ties, control = coxph.control(eps = 1e-10, toler.chol = 1e-13,
                                                                 iter.max = 50))
    s <- summary(fit)
    cc <- fit$concordance
    golden[[paste(name, ties, sep = "_")]] <- list(
      data = case$file, formula = paste("Surv(time, status) ~", case$rhs), ties = ties,
      n_omitted = length(fit$na.action), terms = names(coef(fit)), coef = unname(coef(fit)), se = unname(sqrt(diag(vcov(fit)))),
      vcov = unname(vcov(fit)), loglik = fit$loglik, n = fit$n, nevent = fit$nevent,
      iter = fit$iter, score_test = unname(fit$score), wald_test = unname(fit$wald.test),
      lr_test = 2 * diff(fit$loglik),
      concordance = unname(cc[c("concordant", "discordant", "tied.x", "tied.y", "tied.xy",
                                "concordance", "std")]),
      summary = capture.output(print(s)))
  }
}
writeLines(toJSON(golden, digits = NA, auto_unbox = TRUE, pretty = TRUE),
           file.path(out_dir, "cox_golden.json"))
