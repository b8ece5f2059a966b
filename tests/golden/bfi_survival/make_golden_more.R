# Golden values for the polynomial, piecewise-exponential and "unspecified" baseline hazards
# of BFI survival (tests/core_stats/test_bfi_survival_more.py), from the R package BFI 3.1.0
# (install it into a temporary library, see make_golden.R; then from the repository root
#   R_LIBS=/that/lib Rscript tests/golden/bfi_survival/make_golden_more.R).
# Data (both written by make_golden.R):
# * gompertz_bfi.csv: BFI::surv.simulate(gen_data_from = "gomp"), set.seed(2024), three
#   centres; basehaz "poly" (max_order = 2, alpha = 0.1: R picks each centre's order by a
#   likelihood-ratio test) and "pwexp" (n_intervals = 4, min_max_times = the smallest of the
#   centres' largest times, as R's documentation does).
# * colon_bfi.csv: survival::colon deaths, three centres; basehaz "unspecified" (each centre's
#   Breslow partial likelihood with a N(0, 1/lambda) prior on beta).
# Each is run with R's default optimiser settings and with reltol = 1e-16 / factr = 1 (tight).
# The script also records that bfi(center_spec = ...) refuses a survival model.
suppressPackageStartupMessages({library(BFI); library(jsonlite)})
out_dir <- "tests/golden/bfi_survival"
gomp_d <- read.csv(file.path(out_dir, "gompertz_bfi.csv"))
colon_d <- read.csv(file.path(out_dir, "colon_bfi.csv"))
lambda <- 0.01
golden <- list(R = R.version.string, BFI = as.character(packageVersion("BFI")), lambda = lambda)
local_fits <- function(d, x, basehaz, Lambda, control, ...) {
  lapply(sort(unique(d$centre)), function(k) {
    part <- d[d$centre == k, ]
    MAP.estimation(y = part[, c("time", "status")], X = part[, x], family = "survival",
                   Lambda = Lambda, basehaz = basehaz, control = control, ...)
  })
}
tight <- list(default = list(), tight = list(reltol = 1e-16, factr = 1, pgtol = 0,
                                             maxit = 10000))
x <- c("x1", "x2")
# poly
max_order <- 2
Lambda <- inv.prior.cov(gomp_d[, x], lambda = lambda, family = "survival", basehaz = "poly",
                        max_order = max_order)
for (run in names(tight)) {
  t0 <- proc.time()[["elapsed"]]
  fits <- local_fits(gomp_d, x, "poly", Lambda, tight[[run]], max_order = max_order,
                     alpha = 0.1)
  q_ls <- sapply(fits, function(f) f$q_l)
  q_max <- max(q_ls)
  len <- length(x) + q_max + 1
  combined <- bfi(theta_A_polys = lapply(fits, function(f) f$theta_A_poly),
                  Lambda = Lambda[1:len, 1:len], family = "survival", basehaz = "poly",
                  q_ls = q_ls)
  golden[[paste0("poly_", run)]] <- list(
    data = "gompertz_bfi.csv", covariates = x, max_order = max_order, alpha = 0.1,
    q_ls = q_ls, names = names(combined$theta_hat[1, ]), control = run,
    seconds = proc.time()[["elapsed"]] - t0,
    centres = lapply(fits, function(f) list(
      q_l = f$q_l, theta_hat = unname(f$theta_A_poly[1:len, q_max + 1, 1]),
      A_hat = unname(f$theta_A_poly[1:len, 1:len, q_max + 2]),
      value = f$value[q_max - f$q_l + 1], convergence = f$convergence[q_max - f$q_l + 1])),
    theta_bfi = unname(combined$theta_hat[1, ]), sd_bfi = unname(combined$sd))
}
# pwexp
n_intervals <- 4
min_max_times <- min(tapply(gomp_d$time, gomp_d$centre, max))
Lambda <- inv.prior.cov(gomp_d[, x], lambda = lambda, family = "survival", basehaz = "pwexp",
                        n_intervals = n_intervals)
for (run in names(tight)) {
  t0 <- proc.time()[["elapsed"]]
  fits <- local_fits(gomp_d, x, "pwexp", Lambda, tight[[run]], n_intervals = n_intervals,
                     min_max_times = min_max_times)
  combined <- bfi(theta_hats = lapply(fits, function(f) f$theta_hat),
                  A_hats = lapply(fits, function(f) f$A_hat), Lambda = Lambda,
                  family = "survival", basehaz = "pwexp")
  golden[[paste0("pwexp_", run)]] <- list(
    data = "gompertz_bfi.csv", covariates = x, n_intervals = n_intervals,
    min_max_times = min_max_times, names = names(fits[[1]]$theta_hat), control = run,
    seconds = proc.time()[["elapsed"]] - t0,
    centres = lapply(fits, function(f) list(theta_hat = unname(f$theta_hat),
                                            A_hat = unname(as.matrix(f$A_hat)),
                                            value = f$value, convergence = f$convergence)),
    theta_bfi = unname(combined$theta_hat[1, ]), sd_bfi = unname(combined$sd))
}
# unspecified
xc <- c("sex", "age", "nodes")
Lambda <- inv.prior.cov(colon_d[, xc], lambda = lambda, family = "survival",
                        basehaz = "unspecified")
for (run in names(tight)) {
  t0 <- proc.time()[["elapsed"]]
  fits <- local_fits(colon_d, xc, "unspecified", Lambda, tight[[run]])
  combined <- bfi(theta_hats = lapply(fits, function(f) f$theta_hat),
                  A_hats = lapply(fits, function(f) f$A_hat), Lambda = Lambda,
                  family = "survival", basehaz = "unspecified")
  golden[[paste0("unspecified_", run)]] <- list(
    data = "colon_bfi.csv", covariates = xc, names = names(fits[[1]]$theta_hat),
    control = run, seconds = proc.time()[["elapsed"]] - t0,
    centres = lapply(fits, function(f) list(theta_hat = unname(f$theta_hat),
                                            A_hat = unname(as.matrix(f$A_hat)),
                                            value = f$value, convergence = f$convergence)),
    theta_bfi = unname(combined$theta_hat[1, ]), sd_bfi = unname(combined$sd))
}
# centre covariates (bfi(center_spec = ...)) are for an intercept only: a survival model has none
Lambda <- inv.prior.cov(gomp_d[, x], lambda = lambda, family = "survival", basehaz = "exp")
fits <- local_fits(gomp_d, x, "exp", Lambda, list())
refusal <- tryCatch({
  bfi(theta_hats = lapply(fits, function(f) f$theta_hat),
      A_hats = lapply(fits, function(f) f$A_hat),
      Lambda = list(Lambda, Lambda[c(1, 1:3), c(1, 1:3)]), family = "survival",
      basehaz = "exp", stratified = TRUE, center_spec = c("a", "a", "b"), p = 2)
  "no error"
}, error = function(e) conditionMessage(e))
golden$center_spec_survival <- refusal
writeLines(toJSON(golden, digits = NA, auto_unbox = TRUE, pretty = TRUE),
           file.path(out_dir, "bfi_survival_golden_more.json"))
