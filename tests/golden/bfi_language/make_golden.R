# Golden values for BFI with R's formula language (tests/core_stats/test_bfi_language.py), from
# the R package BFI 3.1.0 (install it into a temporary library from its GitHub release v3.1.0,
# then from the repository root run
#   R_LIBS=/that/lib Rscript tests/golden/bfi_language/make_golden.R).
# R BFI takes a model matrix, so R's own model.matrix() builds it (factors with treatment
# contrasts, interactions, I()) on the pooled rows (the levels every site agrees on), and each
# site's rows of it go to MAP.estimation(); bfi() combines. Column names are R's.
# * guimmun: mlmRev::guImmun, sites = communities modulo 16 (S01..S16; one site has no mother
#   of ethnicity N, so its ethnN columns are all zero), binomial
#   immun ~ kid2p + mom25p + ord + ethn * rural + pcInd81 + I(pcInd81^2).
# * cbpp: lme4::cbpp, sites = herds modulo 3, cbind(incidence, size - incidence) ~ factor(period).
#   R BFI 3.1.0 given a two-column y fits the proportions s/(s+f) with weight 1 (the trials
#   are dropped; see MAP.estimation: y <- y[, 1] / nn, wli <- rep(1, n)), which is not glm's
#   binomial model; the golden therefore gives MAP.estimation one 0/1 row per animal (the
#   same likelihood as glm's cbind() up to a constant). The two-column fit is stored too.
# * mmmec: mlmRev::Mmmec, sites = nations, poisson deaths ~ uvb + offset(log(expected)).
#   R BFI has no Poisson family and no offsets: each site's MAP is optim() (BFGS, reltol
#   1e-16) on the log posterior written below with its exact gradient, A_hat its exact
#   Hessian; bfi() combines them (its binomial branch is the no-dispersion algebra, eq. 3).
# * owls: glmmTMB::Owls, sites = nests modulo 4, poisson SiblingNegotiation ~
#   FoodTreatment * SexParent + I((ArrivalTime - 25)^2) + offset(log(BroodSize)), the same way.
suppressPackageStartupMessages({library(BFI); library(jsonlite)})
out_dir <- "tests/golden/bfi_language"
lambda <- 0.01
sites_for <- function(group, k) sprintf("S%02d", (as.integer(factor(group)) %% k) + 1L)
tight <- list(factr = 1, pgtol = 0, maxit = 100000)  # MAP.estimation runs L-BFGS-B

bfi_binomial <- function(X, y, site, control) {
  colnames(X) <- paste0("x", seq_len(ncol(X)))  # R BFI re-parses the names as a formula
  Lambda <- inv.prior.cov(as.data.frame(X), lambda = lambda, family = "binomial")
  fits <- lapply(sort(unique(site)), function(s) {
    keep <- site == s
    ys <- if (is.matrix(y)) y[keep, , drop = FALSE] else y[keep]
    suppressWarnings(MAP.estimation(y = ys, X = as.data.frame(X[keep, , drop = FALSE]),
                                    family = "binomial", Lambda = Lambda, control = control))
  })
  combined <- bfi(theta_hats = lapply(fits, function(f) f$theta_hat),
                  A_hats = lapply(fits, function(f) f$A_hat), Lambda = Lambda,
                  family = "binomial")
  list(Lambda = unname(Lambda),
       centres = lapply(fits, function(f) list(theta_hat = unname(f$theta_hat),
                                               A_hat = unname(as.matrix(f$A_hat)),
                                               convergence = as.character(f$convergence))),
       theta_bfi = unname(combined$theta_hat[1, ]), sd_bfi = unname(combined$sd))
}

golden <- list(R = R.version.string, BFI = as.character(packageVersion("BFI")),
               lambda = lambda)

# ---- guImmun: factors, an interaction, I()
g <- transform(mlmRev::guImmun, site = sites_for(comm, 16))[,
       c("site", "comm", "immun", "kid2p", "mom25p", "ord", "ethn", "rural", "pcInd81")]
write.csv(g, file.path(out_dir, "data", "guimmun.csv"), row.names = FALSE)
g <- read.csv(file.path(out_dir, "data", "guimmun.csv"), colClasses = c(comm = "character",
              ord = "character"), stringsAsFactors = TRUE)
stopifnot(any(tapply(g$ethn == "N", g$site, sum) == 0))
f_g <- immun ~ kid2p + mom25p + ord + ethn * rural + pcInd81 + I(pcInd81^2)
X <- model.matrix(f_g, g)
y <- as.numeric(g$immun == "Y")
names_g <- colnames(X)
for (run in c("default", "tight")) {
  golden[[paste0("guimmun_", run)]] <- c(
    list(data = "data/guimmun.csv", formula = deparse(f_g), family = "binomial",
         site_column = "site", names = names_g, sites = sort(unique(as.character(g$site))),
         missing_level = names(which(tapply(g$ethn == "N", g$site, sum) == 0))),
    bfi_binomial(X[, -1], y, as.character(g$site), if (run == "tight") tight else list()))
}

# ---- cbpp: cbind() responses (one Bernoulli row per animal for R BFI)
cb <- transform(lme4::cbpp, site = sites_for(herd, 3))[,
        c("site", "herd", "incidence", "size", "period")]
write.csv(cb, file.path(out_dir, "data", "cbpp.csv"), row.names = FALSE)
cb <- read.csv(file.path(out_dir, "data", "cbpp.csv"), colClasses = c(herd = "character",
               period = "character"))
rows <- rep(seq_len(nrow(cb)), cb$size)
animal <- ave(rows, rows, FUN = seq_along)
bern <- cb[rows, ]
bern$y <- as.numeric(animal <= bern$incidence)
Xb <- model.matrix(~ factor(period), bern)
golden$cbpp_tight <- c(list(data = "data/cbpp.csv",
                            formula = "cbind(incidence, size - incidence) ~ factor(period)",
                            family = "binomial", site_column = "site", names = colnames(Xb)),
                       bfi_binomial(Xb[, -1], bern$y, bern$site, tight))
Xc <- model.matrix(~ factor(period), cb)
two <- bfi_binomial(Xc[, -1], cbind(cb$incidence, cb$size - cb$incidence), cb$site, tight)
golden$cbpp_two_column_y <- list(theta_bfi = two$theta_bfi, sd_bfi = two$sd_bfi)

# ---- Mmmec: a Poisson rate model with an offset (MAP written here; bfi() combines)
mm <- transform(mlmRev::Mmmec, site = as.character(nation))[,
        c("site", "region", "deaths", "expected", "uvb")]
write.csv(mm, file.path(out_dir, "data", "mmmec.csv"), row.names = FALSE)
mm <- read.csv(file.path(out_dir, "data", "mmmec.csv"), colClasses = c(region = "character"))
Xm <- model.matrix(~ uvb, mm)
Lm <- diag(lambda, ncol(Xm))
dimnames(Lm) <- list(colnames(Xm), colnames(Xm))
poisson_map <- function(X, y, off) {
  nlp <- function(b) { eta <- drop(X %*% b) + off
    -(sum(y * eta - exp(eta) - lgamma(y + 1)) - 0.5 * sum(b * (Lm %*% b))) }
  grad <- function(b) { mu <- exp(drop(X %*% b) + off)
    -(drop(crossprod(X, y - mu)) - drop(Lm %*% b)) }
  start <- coef(glm.fit(X, y, family = poisson(), offset = off))
  fit <- optim(start, nlp, grad, method = "BFGS", control = list(reltol = 1e-16, maxit = 10000))
  mu <- exp(drop(X %*% fit$par) + off)
  theta <- setNames(fit$par, colnames(X))
  A <- crossprod(X, mu * X) + Lm
  dimnames(A) <- list(colnames(X), colnames(X))
  list(theta_hat = theta, A_hat = A,
       convergence = fit$convergence)
}
fits <- lapply(sort(unique(mm$site)), function(s) {
  keep <- mm$site == s
  poisson_map(Xm[keep, , drop = FALSE], mm$deaths[keep], log(mm$expected[keep]))
})
combined <- bfi(theta_hats = lapply(fits, function(f) f$theta_hat),
                A_hats = lapply(fits, function(f) f$A_hat), Lambda = Lm, family = "binomial")
golden$mmmec_offset <- list(
  data = "data/mmmec.csv", formula = "deaths ~ uvb + offset(log(expected))",
  family = "poisson", site_column = "site", names = colnames(Xm),
  sites = sort(unique(mm$site)),
  centres = lapply(fits, function(f) list(theta_hat = unname(f$theta_hat),
                                          A_hat = unname(f$A_hat),
                                          convergence = f$convergence)),
  theta_bfi = unname(combined$theta_hat[1, ]), sd_bfi = unname(combined$sd))

# ---- Owls: factors, their interaction, I() and an offset (Poisson; MAP written above)
ow <- transform(glmmTMB::Owls, site = sites_for(Nest, 4))[,
        c("site", "Nest", "FoodTreatment", "SexParent", "ArrivalTime", "SiblingNegotiation",
          "BroodSize")]
write.csv(ow, file.path(out_dir, "data", "owls.csv"), row.names = FALSE)
ow <- read.csv(file.path(out_dir, "data", "owls.csv"), stringsAsFactors = TRUE)
f_ow <- SiblingNegotiation ~ FoodTreatment * SexParent + I((ArrivalTime - 25)^2)
Xo <- model.matrix(f_ow, ow)
Lm <- diag(lambda, ncol(Xo))
dimnames(Lm) <- list(colnames(Xo), colnames(Xo))
fits <- lapply(sort(unique(as.character(ow$site))), function(s) {
  keep <- ow$site == s
  poisson_map(Xo[keep, , drop = FALSE], ow$SiblingNegotiation[keep], log(ow$BroodSize[keep]))
})
combined <- bfi(theta_hats = lapply(fits, function(f) f$theta_hat),
                A_hats = lapply(fits, function(f) f$A_hat), Lambda = Lm, family = "binomial")
golden$owls_offset <- list(
  data = "data/owls.csv",
  formula = paste(deparse(f_ow, width.cutoff = 500L), "+ offset(log(BroodSize))"),
  family = "poisson", site_column = "site", names = colnames(Xo),
  centres = lapply(fits, function(f) list(theta_hat = unname(f$theta_hat),
                                          A_hat = unname(f$A_hat),
                                          convergence = f$convergence)),
  theta_bfi = unname(combined$theta_hat[1, ]), sd_bfi = unname(combined$sd))

writeLines(toJSON(golden, digits = NA, auto_unbox = TRUE, pretty = TRUE),
           file.path(out_dir, "bfi_language_golden.json"))
