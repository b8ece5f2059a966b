## Golden values for the GLMM families of issue 16: Gamma (log and inverse
## links) and glmmTMB's negative binomial nbinom2 (var = mu + mu^2 / theta),
## and the Gaussian REML criterion of lmer, on data R packages ship:
##   lme4::grouseticks (tick counts, NB2), glmmTMB::Salamanders (counts, NB2),
##   lme4::sleepstudy (reaction times in ms, positive and continuous: Gamma),
##   mlmRev::Exam (normexam, lmer REML).
##
## Run from the repository root:  Rscript tests/golden/glmm_families/make_golden.R
## Writes data/<name>.csv (a `centre` column grouping whole groups into sites)
## and <name>.json: glmmTMB's exact Laplace estimates (full-constant logLik),
## standard errors, random-effect SDs and dispersion as glmmTMB reports it
## (Gamma: sigma^2 = 1/shape; nbinom2: theta); for REML, lmer(REML = TRUE).
suppressPackageStartupMessages({
  library(lme4); library(glmmTMB); library(mlmRev); library(jsonlite)
})
out <- file.path("tests", "golden", "glmm_families")
stopifnot(dir.exists(out))

sites_for <- function(group, k) paste0("S", (as.integer(factor(group)) %% k) + 1L)

cases <- list(
  grouseticks_nbinom2 = list(
    data = transform(lme4::grouseticks, YEAR = as.integer(as.character(YEAR)),
                     centre = sites_for(LOCATION, 4))[,
             c("centre", "LOCATION", "TICKS", "YEAR", "HEIGHT")],
    formula = TICKS ~ factor(YEAR) + HEIGHT + (1 | LOCATION),
    family = "nbinom2", group = "LOCATION"),
  salamanders_nbinom2 = list(
    data = transform(glmmTMB::Salamanders, centre = sites_for(site, 4))[,
             c("centre", "site", "count", "mined", "spp")],
    formula = count ~ mined + (1 | site),
    family = "nbinom2", group = "site"),
  sleepstudy_gamma_log = list(
    data = transform(lme4::sleepstudy, centre = sites_for(Subject, 3)),
    formula = Reaction ~ Days + (1 | Subject),
    family = Gamma(link = "log"), group = "Subject"),
  sleepstudy_gamma_inverse = list(
    data = transform(lme4::sleepstudy, centre = sites_for(Subject, 3)),
    formula = Reaction ~ Days + (1 | Subject),
    family = Gamma(link = "inverse"), group = "Subject")
)

write_case <- function(name, res) {
  writeLines(toJSON(res, digits = NA, auto_unbox = TRUE, pretty = TRUE, null = "null",
                    na = "null"),
             file.path(out, paste0(name, ".json")))
  cat(name, "done\n")
}
provenance <- function() list(
  R = R.version.string, lme4 = as.character(packageVersion("lme4")),
  glmmTMB = as.character(packageVersion("glmmTMB")),
  command = "Rscript tests/golden/glmm_families/make_golden.R")

for (name in names(cases)) {
  case <- cases[[name]]
  csv <- file.path(out, "data", paste0(name, ".csv"))
  write.csv(case$data, csv, row.names = FALSE)
  d <- read.csv(csv)  # exactly what securefed reads
  stopifnot(all(tapply(d$centre, d[[case$group]], function(s) length(unique(s))) == 1))
  fam <- if (is.character(case$family)) get(case$family)() else case$family
  ## the inverse link needs a start with eta > 0 everywhere: the GLM's estimates
  start <- if (fam$link == "inverse")
    list(beta = unname(coef(glm(nobars(case$formula), data = d, family = fam))))
  m <- if (is.null(start)) glmmTMB(case$formula, data = d, family = fam) else
    suppressWarnings(glmmTMB(case$formula, data = d, family = fam, start = start))
  stopifnot(m$fit$convergence == 0)
  disp <- if (fam$family == "Gamma") sigma(m)^2 else sigma(m)
  write_case(name, list(
    formula = paste(deparse(case$formula, width.cutoff = 500L), collapse = ""),
    family = if (fam$family == "Gamma") "Gamma" else "negative_binomial",
    r_family = fam$family, link = fam$link, site_column = "centre",
    dataset_path = file.path("data", paste0(name, ".csv")),
    n_obs = nobs(m), n_groups = as.integer(summary(m)$ngrps$cond),
    glmmtmb = list(fixef = as.list(fixef(m)$cond),
                   se = as.list(sqrt(diag(vcov(m)$cond))),
                   sd = as.list(sqrt(diag(VarCorr(m)$cond[[1]]))),
                   dispersion = disp,
                   dispersion_name = if (fam$family == "Gamma") "sigma^2" else "theta",
                   betad = unname(m$fit$par["betad"]),
                   loglik = as.numeric(logLik(m))),
    provenance = provenance()))
}

## Gaussian REML: lmer's default criterion on mlmRev's Exam, schools in 5 sites; the
## second formula is the issue's (school SD 0.2930 under REML, 0.2848 under ML); and
## lme4's Dyestuff2, whose REML fit is singular (batch variance 0); lme4's sleepstudy with
## a correlated random slope, lmer's own example
exam <- transform(mlmRev::Exam, centre = sites_for(school, 5))[,
          c("centre", "school", "normexam", "standLRT", "sex", "schgend")]
dye <- transform(lme4::Dyestuff2, centre = sites_for(Batch, 3))
sleep <- transform(lme4::sleepstudy, centre = sites_for(Subject, 3))
write.csv(sleep, file.path(out, "data", "sleepstudy_reml_slope.csv"), row.names = FALSE)
write.csv(exam, file.path(out, "data", "exam_reml.csv"), row.names = FALSE)
write.csv(dye, file.path(out, "data", "dyestuff2_reml.csv"), row.names = FALSE)
reml_cases <- list(
  exam_reml = list(csv = "exam_reml.csv", f = normexam ~ standLRT + (1 | school)),
  exam_reml_issue = list(csv = "exam_reml.csv",
                         f = normexam ~ standLRT + sex + schgend + (1 | school)),
  dyestuff2_reml = list(csv = "dyestuff2_reml.csv", f = Yield ~ 1 + (1 | Batch)),
  sleepstudy_reml_slope = list(csv = "sleepstudy_reml_slope.csv",
                               f = Reaction ~ Days + (Days | Subject)))
for (name in names(reml_cases)) {
  f <- reml_cases[[name]]$f
  d <- read.csv(file.path(out, "data", reml_cases[[name]]$csv))
  m <- lmer(f, data = d, REML = TRUE, control = lmerControl(optimizer = "bobyqa"))
  m_ml <- update(m, REML = FALSE)
  vc <- as.data.frame(VarCorr(m))
  write_case(name, list(
    formula = paste(deparse(f, width.cutoff = 500L), collapse = ""), family = "gaussian",
    link = "identity", site_column = "centre",
    dataset_path = file.path("data", reml_cases[[name]]$csv),
    reml = TRUE, n_obs = nobs(m), n_groups = as.integer(ngrps(m)),
    lmer = list(fixef = as.list(fixef(m)), se = as.list(sqrt(diag(as.matrix(vcov(m))))),
                sd = as.list(setNames(vc$sdcor[1], vc$grp[1])), sigma = sigma(m),
                all_sd = vc$sdcor[is.na(vc$var2)], corr = vc$sdcor[!is.na(vc$var2)],
                singular = isSingular(m),
                reml_criterion = unname(REMLcrit(m)), loglik = as.numeric(logLik(m)),
                ml_sd = as.data.frame(VarCorr(m_ml))$sdcor[1]),
    provenance = provenance()))
}
