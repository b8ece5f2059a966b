## Golden values for the lme4 model language (issue 16): offsets, factors and
## their interactions, factors inside random-effects terms, I() powers and
## text (Y/N) outcomes, on data R packages ship.
##
## Run from the repository root:  Rscript tests/golden/glmm_language/make_golden.R
## Writes data/<name>.csv (with a site column grouping whole groups) and
## <name>.json: glmer (nAGQ = 1) and glmmTMB (exact Laplace, full-constant
## log-likelihood) estimates, standard errors and random-effect SDs.
suppressPackageStartupMessages({
  library(lme4); library(glmmTMB); library(mlmRev); library(jsonlite)
})
out <- file.path("tests", "golden", "glmm_language")
stopifnot(dir.exists(out))

sites_for <- function(group, k) paste0("S", (as.integer(factor(group)) %% k) + 1L)

cases <- list(
  mmmec_offset = list(
    data = transform(mlmRev::Mmmec, site = as.character(nation))[,
             c("site", "region", "deaths", "expected", "uvb")],
    formula = deaths ~ uvb + offset(log(expected)) + (1 | region),
    family = poisson, site_column = "site", group = "region"),
  mmmec_slope_boundary = list(
    data = transform(mlmRev::Mmmec, site = as.character(nation))[,
             c("site", "region", "deaths", "expected", "uvb")],
    formula = deaths ~ uvb + log(expected) + (1 + uvb | region),
    family = poisson, site_column = "site", group = "region"),
  cbpp_cbind = list(
    data = transform(lme4::cbpp, site = sites_for(herd, 3)),
    formula = cbind(incidence, size - incidence) ~ factor(period) + (1 | herd),
    family = binomial, site_column = "site", group = "herd"),
  cbpp_probit = list(
    data = transform(lme4::cbpp, site = sites_for(herd, 3)),
    formula = cbind(incidence, size - incidence) ~ factor(period) + (1 | herd),
    family = binomial(link = "probit"), site_column = "site", group = "herd"),
  guimmun_cloglog = list(
    data = transform(mlmRev::guImmun, site = sites_for(comm, 6))[,
             c("site", "comm", "immun", "kid2p", "mom25p", "ord", "momWork", "rural")],
    formula = immun ~ kid2p + mom25p + ord + momWork + rural + (1 | comm),
    family = binomial(link = "cloglog"), site_column = "site", group = "comm"),
  owls_factors = list(
    data = transform(glmmTMB::Owls, site = sites_for(Nest, 4))[,
             c("site", "Nest", "FoodTreatment", "SexParent", "ArrivalTime",
               "SiblingNegotiation", "BroodSize")],
    formula = SiblingNegotiation ~ FoodTreatment * SexParent + I((ArrivalTime - 25)^2) +
      offset(log(BroodSize)) + (1 | Nest),
    family = poisson, site_column = "site", group = "Nest"),
  owls_factor_slope = list(
    data = transform(glmmTMB::Owls, site = sites_for(Nest, 4))[,
             c("site", "Nest", "FoodTreatment", "SexParent", "ArrivalTime",
               "SiblingNegotiation", "BroodSize")],
    formula = SiblingNegotiation ~ FoodTreatment + ArrivalTime + (1 + FoodTreatment | Nest),
    family = poisson, site_column = "site", group = "Nest"),
  guimmun_text = list(
    data = transform(mlmRev::guImmun, site = sites_for(comm, 6))[,
             c("site", "comm", "immun", "kid2p", "mom25p", "ord", "ethn", "momEd",
               "husEd", "momWork", "rural", "pcInd81")],
    formula = immun ~ kid2p + mom25p + ord + ethn + momEd + husEd + momWork + rural +
      pcInd81 + (1 | comm),
    family = binomial, site_column = "site", group = "comm")
)

for (name in names(cases)) {
  case <- cases[[name]]
  if (is.function(case$family)) case$family <- case$family()
  csv <- file.path(out, "data", paste0(name, ".csv"))
  write.csv(case$data, csv, row.names = FALSE)
  d <- read.csv(csv)  # exactly what securefed reads: text columns, numbers
  ## glmer refuses a character response; as a factor its first level is failure,
  ## which is what securefed does with a two-category text outcome
  if (is.character(d[[all.vars(case$formula)[1]]]))
    d[[all.vars(case$formula)[1]]] <- factor(d[[all.vars(case$formula)[1]]])
  stopifnot(all(tapply(d[[case$site_column]], d[[case$group]],
                       function(s) length(unique(s))) == 1))
  m_lme4 <- glmer(case$formula, data = d, family = case$family, nAGQ = 1,
                  control = glmerControl(optimizer = "bobyqa", tolPwrss = 1e-10))
  m_tmb <- glmmTMB(case$formula, data = d, family = case$family)
  vc <- as.data.frame(VarCorr(m_lme4))
  tmb_sd <- sqrt(diag(VarCorr(m_tmb)$cond[[1]]))
  res <- list(
    formula = paste(deparse(case$formula, width.cutoff = 500L), collapse = ""),
    family = case$family$family, link = case$family$link, site_column = case$site_column,
    dataset_path = file.path("data", paste0(name, ".csv")),
    n_obs = nobs(m_lme4), n_groups = as.integer(ngrps(m_lme4)),
    lme4 = list(fixef = as.list(fixef(m_lme4)),
                se = as.list(sqrt(diag(as.matrix(vcov(m_lme4))))),
                random = vc[, c("var1", "var2", "sdcor")],
                loglik = as.numeric(logLik(m_lme4)),
                messages = m_lme4@optinfo$conv$lme4$messages),
    glmmtmb = list(fixef = as.list(fixef(m_tmb)$cond),
                   se = as.list(sqrt(diag(vcov(m_tmb)$cond))),
                   sd = as.list(tmb_sd),
                   corr = if (length(tmb_sd) > 1) attr(VarCorr(m_tmb)$cond[[1]], "correlation")[1, 2] else NULL,
                   loglik = as.numeric(logLik(m_tmb))),
    provenance = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                      glmmTMB = as.character(packageVersion("glmmTMB")),
                      command = "Rscript tests/golden/glmm_language/make_golden.R"))
  writeLines(toJSON(res, digits = NA, auto_unbox = TRUE, pretty = TRUE, null = "null",
                    na = "null"),
             file.path(out, paste0(name, ".json")))
  cat(name, "done\n")
}
