# Golden values for BFI survival models (tests/core_stats/test_bfi_survival.py), from the R
# package BFI 3.1.0 (not packaged for Debian: install it into a temporary library from its
# GitHub release v3.1.0, then from the repository root run
#   R_LIBS=/that/lib Rscript tests/golden/bfi_survival/make_golden.R).
# Data:
# * colon_bfi.csv: survival::colon, the death records (etype == 2), complete cases, time in
#   years, three centres, centre = 1 + (id %% 3); exponential and Weibull baselines. (Its
#   hazard falls over time, so a Gompertz fit, whose b = exp(omega_2) > 0, has no optimum.)
# * gompertz_bfi.csv: BFI::surv.simulate(gen_data_from = "gomp") with set.seed(2024),
#   three centres of 150, 120 and 180 patients; Gompertz baseline.
suppressPackageStartupMessages({library(survival); library(BFI); library(jsonlite)})
out_dir <- "tests/golden/bfi_survival"
colon_d <- na.omit(colon[colon$etype == 2, c("id", "time", "status", "sex", "age", "nodes")])
colon_d$time <- colon_d$time / 365.25
colon_d$centre <- 1 + colon_d$id %% 3
colon_d <- colon_d[, c("time", "status", "sex", "age", "nodes", "centre")]
write.csv(colon_d, file.path(out_dir, "colon_bfi.csv"), row.names = FALSE)

set.seed(2024)
Z <- lapply(c(150, 120, 180), function(n) data.frame(x1 = rnorm(n), x2 = rbinom(n, 1, 0.5)))
sim <- surv.simulate(L = 3, Z = Z, beta = c(0.5, -0.5), a = 0.5, b = 0.8, u1 = 0.1,
                     cen_rate = 0.3, gen_data_from = "gomp")
gomp_d <- do.call(rbind, lapply(1:3, function(k)
  data.frame(time = sim$D[[k]]$time, status = sim$D[[k]]$status,
             x1 = sim$D[[k]]$Z.x1, x2 = sim$D[[k]]$Z.x2, centre = k)))
write.csv(gomp_d, file.path(out_dir, "gompertz_bfi.csv"), row.names = FALSE)

lambda <- 0.01
golden <- list(R = R.version.string, BFI = as.character(packageVersion("BFI")),
               lambda = lambda)
cases <- list(exp = list(d = colon_d, file = "colon_bfi.csv", x = c("sex", "age", "nodes")),
              weibul = list(d = colon_d, file = "colon_bfi.csv", x = c("sex", "age", "nodes")),
              gomp = list(d = gomp_d, file = "gompertz_bfi.csv", x = c("x1", "x2")))
for (basehaz in names(cases)) {
  case <- cases[[basehaz]]
  d <- case$d
  Lambda <- inv.prior.cov(d[, case$x], lambda = lambda, family = "survival",
                          basehaz = basehaz)
  # R's defaults (optim BFGS, reltol 1e-8), and a tight run (reltol 1e-16, maxit 10000)
  # that shows where the defaults stop short.
  for (run in c("default", "tight")) {
    control <- if (run == "tight") list(reltol = 1e-16, maxit = 10000) else list()
    fits <- lapply(1:3, function(k) {
      part <- d[d$centre == k, ]
      MAP.estimation(y = part[, c("time", "status")], X = part[, case$x],
                     family = "survival", Lambda = Lambda, basehaz = basehaz,
                     control = control)
    })
    combined <- bfi(theta_hats = lapply(fits, function(f) f$theta_hat),
                    A_hats = lapply(fits, function(f) f$A_hat), Lambda = Lambda,
                    family = "survival", basehaz = basehaz)
    golden[[paste(basehaz, run, sep = "_")]] <- list(
      data = case$file, covariates = case$x, names = names(fits[[1]]$theta_hat),
      basehaz = basehaz, control = run, Lambda = unname(Lambda),
      centres = lapply(fits, function(f) list(theta_hat = unname(f$theta_hat),
                                              A_hat = unname(as.matrix(f$A_hat)),
                                              value = f$value,
                                              convergence = f$convergence)),
      theta_bfi = unname(combined$theta_hat[1, ]), A_bfi = unname(as.matrix(combined$A_hat)),
      sd_bfi = unname(combined$sd))
  }
}
writeLines(toJSON(golden, digits = NA, auto_unbox = TRUE, pretty = TRUE),
           file.path(out_dir, "bfi_survival_golden.json"))

# Centre-specific baseline parameters (bfi(stratified = TRUE, strat_par = ...)) on the
# simulated Gompertz data, with R's optimiser tightened (reltol 1e-16) so its local fits
# converge; the combined prior gives every centre's own parameters lambda.
strat <- list()
for (sp in list(1, c(1, 2))) {
  d <- gomp_d
  x <- c("x1", "x2")
  Lambda <- inv.prior.cov(d[, x], lambda = lambda, family = "survival", basehaz = "gomp")
  Lambda_comb <- inv.prior.cov(d[, x], lambda = rep(lambda, 2 + 3 * length(sp) + 2 - length(sp)),
                               L = 3, family = "survival", basehaz = "gomp",
                               stratified = TRUE, strat_par = sp)
  fits <- lapply(1:3, function(k) {
    part <- d[d$centre == k, ]
    MAP.estimation(y = part[, c("time", "status")], X = part[, x], family = "survival",
                   Lambda = Lambda, basehaz = "gomp",
                   control = list(reltol = 1e-16, maxit = 10000))
  })
  combined <- bfi(theta_hats = lapply(fits, function(f) f$theta_hat),
                  A_hats = lapply(fits, function(f) f$A_hat),
                  Lambda = list(Lambda, Lambda_comb), family = "survival", basehaz = "gomp",
                  stratified = TRUE, strat_par = sp, p = length(x))
  strat[[paste(sp, collapse = "_")]] <- list(
    strat_par = sp, names = names(combined$theta_hat),
    theta_bfi = unname(combined$theta_hat), sd_bfi = unname(combined$sd),
    Lambda_combined = unname(Lambda_comb),
    centres = lapply(fits, function(f) list(theta_hat = unname(f$theta_hat),
                                            A_hat = unname(as.matrix(f$A_hat)))))
}
golden$gomp_stratified <- strat
writeLines(toJSON(golden, digits = NA, auto_unbox = TRUE, pretty = TRUE),
           file.path(out_dir, "bfi_survival_golden.json"))
