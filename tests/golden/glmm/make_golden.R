## Golden reference values for securefed's federated GLMM (METHODS.md §1).
##
## Run from the repository root:
##     Rscript tests/golden/glmm/make_golden.R
##
## Writes, into tests/golden/glmm/:
##     data/<name>.csv   the exact data each model is fitted on (numeric only)
##     <name>.json       lme4 (nAGQ = 1, 2, 5, 10) and glmmTMB fits, plus our
##                       own full-constant marginal log-likelihoods
## See tests/golden/README.md for the JSON schema and the findings.
##
## Only base R, lme4, glmmTMB, numDeriv and (for a parse check only) jsonlite.
## JSON is written by a small base-R writer (sprintf "%.17g") because
## jsonlite's writer rounds doubles to 15 significant digits.

suppressPackageStartupMessages({
    library(lme4)
    library(glmmTMB)
    library(numDeriv)
})

out_dir <- file.path("tests", "golden", "glmm")
data_dir <- file.path(out_dir, "data")
stopifnot(dir.exists(out_dir))
dir.create(data_dir, showWarnings = FALSE)

NAGQ_GLMM <- c(1L, 2L, 5L, 10L)
GENERATED <- format(Sys.time(), "%Y-%m-%dT%H:%M:%SZ", tz = "UTC")
PROVENANCE <- list(
    R_version = R.version.string,
    lme4_version = as.character(packageVersion("lme4")),
    glmmTMB_version = as.character(packageVersion("glmmTMB")),
    TMB_version = as.character(packageVersion("TMB")),
    Matrix_version = as.character(packageVersion("Matrix")),
    date = GENERATED,
    command = "Rscript tests/golden/glmm/make_golden.R"
)

## ---------------------------------------------------------------------------
## JSON writer (base R, %.17g round-trips every double exactly)
## ---------------------------------------------------------------------------

json_string <- function(s) {
    s <- gsub("\\", "\\\\", s, fixed = TRUE)
    s <- gsub("\"", "\\\"", s, fixed = TRUE)
    s <- gsub("\n", "\\n", s, fixed = TRUE)
    s <- gsub("\t", "\\t", s, fixed = TRUE)
    s <- gsub("\r", "\\r", s, fixed = TRUE)
    paste0("\"", s, "\"")
}

json_scalar <- function(v) {
    if (is.na(v)) return("null")
    if (is.logical(v)) return(if (v) "true" else "false")
    if (is.character(v)) return(json_string(v))
    if (is.factor(v)) return(json_string(as.character(v)))
    if (is.integer(v)) return(sprintf("%d", v))
    if (!is.finite(v)) return("null")
    sprintf("%.17g", v)
}

## Scalars (length-1 atomic without class "AsIs") become JSON scalars; other
## atomic vectors become arrays (objects if named); lists become objects if
## named, arrays otherwise; NULL becomes null.
to_json <- function(x, indent = 0L) {
    pad <- strrep("  ", indent + 1L)
    pad_end <- strrep("  ", indent)
    if (is.null(x)) return("null")
    if (is.matrix(x)) x <- lapply(seq_len(nrow(x)), function(i) unname(I(x[i, ])))
    if (is.atomic(x)) {
        as_array <- inherits(x, "AsIs") || length(x) != 1L || !is.null(names(x))
        x <- unclass(x)
        if (!as_array) return(json_scalar(x))
        if (!is.null(names(x))) {
            x <- as.list(x)
        } else {
            if (length(x) == 0L) return("[]")
            return(paste0("[", paste(vapply(seq_along(x), function(i) json_scalar(x[[i]]), ""),
                                     collapse = ", "), "]"))
        }
    }
    if (length(x) == 0L) return(if (is.null(names(x))) "[]" else "{}")
    items <- vapply(seq_along(x), function(i) to_json(x[[i]], indent + 1L), "")
    if (!is.null(names(x))) {
        items <- paste0(json_string(names(x)), ": ", items)
        paste0("{\n", pad, paste(items, collapse = paste0(",\n", pad)), "\n", pad_end, "}")
    } else {
        paste0("[\n", pad, paste(items, collapse = paste0(",\n", pad)), "\n", pad_end, "]")
    }
}

write_json_file <- function(x, path) {
    txt <- to_json(x)
    writeLines(txt, path, useBytes = TRUE)
    ## parse check (jsonlite's reader, not its writer)
    if (requireNamespace("jsonlite", quietly = TRUE)) {
        back <- jsonlite::fromJSON(path, simplifyVector = FALSE)
        stopifnot(is.list(back))
    }
    invisible(path)
}

## ---------------------------------------------------------------------------
## CSV writer with exact doubles
## ---------------------------------------------------------------------------

write_csv_exact <- function(df, name) {
    path <- file.path(data_dir, paste0(name, ".csv"))
    stopifnot(all(vapply(df, is.numeric, TRUE)))
    chr <- as.data.frame(lapply(df, function(col) {
        if (is.integer(col)) sprintf("%d", col) else sprintf("%.17g", col)
    }), stringsAsFactors = FALSE)
    write.csv(chr, path, row.names = FALSE, quote = FALSE)
    back <- read.csv(path)
    stopifnot(identical(names(back), names(df)), nrow(back) == nrow(df))
    for (nm in names(df)) {
        if (!identical(as.double(back[[nm]]), as.double(df[[nm]])))
            stop("CSV round trip not exact for column ", nm, " of ", name)
    }
    ## fit on the re-read data: integer-valued columns come back as integer
    back
}

## ---------------------------------------------------------------------------
## Our own marginal log-likelihood: full constants, adaptive Gauss-Hermite
## (METHODS.md §1), plus a numerical-integration reference.
## ---------------------------------------------------------------------------

## Gauss-Hermite rule for weight exp(-z^2) (Golub-Welsch)
gh_rule <- function(K) {
    if (K == 1L) return(list(z = 0, w = sqrt(pi)))
    i <- seq_len(K - 1L)
    J <- matrix(0, K, K)
    J[cbind(i, i + 1L)] <- sqrt(i / 2)
    J[cbind(i + 1L, i)] <- sqrt(i / 2)
    e <- eigen(J, symmetric = TRUE)
    o <- order(e$values)
    z <- e$values[o]
    z[abs(z) < 1e-14] <- 0
    list(z = z, w = sqrt(pi) * e$vectors[1, o]^2)
}

log1pexp <- function(x) ifelse(x > 0, x + log1p(exp(-x)), log1p(exp(x)))

## Conditional log density of each observation given linear predictor eta,
## with all constants (lchoose for binomial, -lgamma(y+1) for Poisson).
## Returns list(ll = sum, d1 = sum d/deta, d2 = sum d2/deta2).
cond_loglik <- function(family, y, trials, eta) {
    if (family == "binomial") {
        mu <- plogis(eta)
        list(ll = sum(y * eta - trials * log1pexp(eta) + lchoose(trials, y)),
             d1 = sum(y - trials * mu),
             d2 = -sum(trials * mu * (1 - mu)))
    } else if (family == "poisson") {
        mu <- exp(eta)
        list(ll = sum(y * eta - mu - lgamma(y + 1)),
             d1 = sum(y - mu),
             d2 = -sum(mu))
    } else stop("family ", family)
}

## Saturated log-likelihood: sum_i log p(y_i | mu_i = y_i)
saturated_loglik <- function(family, y, trials) {
    if (family == "binomial") {
        sum(dbinom(y, trials, y / trials, log = TRUE))
    } else if (family == "poisson") {
        sum(dpois(y, y, log = TRUE))
    } else stop("family ", family)
}

## One group: h(b) = sum_i log p(y_i | eta0_i + b) + log N(b; 0, sigma^2)
group_mode <- function(family, y, trials, eta0, sigma) {
    b <- 0
    h <- function(b) cond_loglik(family, y, trials, eta0 + b)$ll + dnorm(b, 0, sigma, log = TRUE)
    for (it in 1:200) {
        c0 <- cond_loglik(family, y, trials, eta0 + b)
        g <- c0$d1 - b / sigma^2
        H <- -(c0$d2 - 1 / sigma^2)
        step <- g / H
        hb <- h(b)
        t <- 1
        while (h(b + t * step) < hb - 1e-12 * abs(hb) && t > 1e-8) t <- t / 2
        b <- b + t * step
        if (abs(t * step) < 1e-13 * max(1, abs(b))) break
    }
    c0 <- cond_loglik(family, y, trials, eta0 + b)
    list(b = b, H = -(c0$d2 - 1 / sigma^2), h = h, hb = h(b))
}

## Per-observation conditional log density (all constants) and its first two
## derivatives in eta.
cond_terms <- function(family, y, trials, eta) {
    if (family == "binomial") {
        mu <- plogis(eta)
        list(ll = y * eta - trials * log1pexp(eta) + lchoose(trials, y),
             d1 = y - trials * mu, w = trials * mu * (1 - mu))
    } else if (family == "poisson") {
        mu <- exp(eta)
        list(ll = y * eta - mu - lgamma(y + 1), d1 = y - mu, w = mu)
    } else stop("family ", family)
}

## Adaptive GH marginal log-likelihood with K nodes (K = 1: Laplace),
## METHODS.md §1, vectorised over groups: Newton for all conditional modes at
## once (per-group step halving), then the K-node rule around each mode.
## sigma = 0 gives the conditional log-likelihood at b = 0 (the exact limit).
marginal_loglik <- function(family, y, trials, eta0, group, sigma, K) {
    if (sigma <= 0) return(cond_loglik(family, y, trials, eta0)$ll)
    g <- as.integer(factor(group))
    G <- max(g)
    h_groups <- function(b) {
        drop(rowsum(cond_terms(family, y, trials, eta0 + b[g])$ll, g, reorder = TRUE)) +
            dnorm(b, 0, sigma, log = TRUE)
    }
    b <- numeric(G)
    hb <- h_groups(b)
    for (it in 1:500) {
        ct <- cond_terms(family, y, trials, eta0 + b[g])
        grad <- drop(rowsum(ct$d1, g, reorder = TRUE)) - b / sigma^2
        H <- drop(rowsum(ct$w, g, reorder = TRUE)) + 1 / sigma^2
        step <- grad / H
        t <- rep(1, G)
        repeat {
            hn <- h_groups(b + t * step)
            bad <- hn < hb - 1e-12 * abs(hb) & t > 1e-10
            if (!any(bad)) break
            t[bad] <- t[bad] / 2
        }
        b <- b + t * step
        hb <- h_groups(b)
        if (max(abs(t * step) / pmax(1, abs(b))) < 1e-14) break
    }
    ct <- cond_terms(family, y, trials, eta0 + b[g])
    H <- drop(rowsum(ct$w, g, reorder = TRUE)) + 1 / sigma^2
    rule <- gh_rule(K)
    vals <- vapply(seq_along(rule$z), function(k)
        log(rule$w[k]) + h_groups(b + sqrt(2 / H) * rule$z[k]) + rule$z[k]^2, numeric(G))
    vals <- matrix(vals, nrow = G)
    mx <- apply(vals, 1, max)
    sum(0.5 * log(2) - 0.5 * log(H) + mx + log(rowSums(exp(vals - mx))))
}

## Reference: stats::integrate per group around the mode
marginal_loglik_integrate <- function(family, y, trials, eta0, group, sigma) {
    if (sigma <= 0) return(cond_loglik(family, y, trials, eta0)$ll)
    total <- 0
    for (idx in split(seq_along(y), group)) {
        m <- group_mode(family, y[idx], trials[idx], eta0[idx], sigma)
        s <- 1 / sqrt(m$H)
        f <- function(u) vapply(u, function(ui) exp(m$h(m$b + s * ui) - m$hb), 0)
        I <- integrate(f, -Inf, Inf, rel.tol = 1e-12, abs.tol = 0, subdivisions = 1000L)
        total <- total + m$hb + log(s) + log(I$value)
    }
    total
}

## Gaussian random-intercept model: exact marginal log-likelihood
gaussian_marginal_loglik <- function(y, mu, group, sd_b, sigma) {
    total <- 0
    for (idx in split(seq_along(y), group)) {
        n <- length(idx)
        r <- y[idx] - mu[idx]
        s2 <- sigma^2
        t2 <- sd_b^2
        logdet <- (n - 1) * log(s2) + log(s2 + n * t2)
        quad <- (sum(r^2) - t2 / (s2 + n * t2) * sum(r)^2) / s2
        total <- total - 0.5 * (n * log(2 * pi) + logdet + quad)
    }
    total
}

## ---------------------------------------------------------------------------
## Fitting helpers
## ---------------------------------------------------------------------------

capture_warnings <- function(expr) {
    warns <- character(0)
    elapsed <- system.time(
        value <- withCallingHandlers(expr, warning = function(w) {
            warns <<- c(warns, conditionMessage(w))
            invokeRestart("muffleWarning")
        })
    )[["elapsed"]]
    list(value = value, warnings = warns, seconds = elapsed)
}

named <- function(v) as.list(v)

ranef_list <- function(fit, group_column) {
    re <- ranef(fit)[[group_column]]
    setNames(as.list(re[, 1]), rownames(re))
}

## Objective used for polishing and for the observed-information SEs:
## full marginal log-likelihood in (beta, log sd).
make_negll <- function(family, y, trials, X, group, K) {
    function(par) {
        p <- ncol(X)
        -marginal_loglik(family, y, trials, drop(X %*% par[1:p]), group, exp(par[p + 1]), K)
    }
}

observed_information_se <- function(negll, par, names_beta) {
    Hs <- numDeriv::hessian(negll, par)
    V <- tryCatch(solve(Hs), error = function(e) NULL)
    if (is.null(V) || any(diag(V) <= 0)) return(NULL)
    p <- length(names_beta)
    list(se = setNames(as.list(sqrt(diag(V))[1:p]), names_beta),
         se_log_sd = sqrt(V[p + 1, p + 1]))
}

## converged: optimizer code 0, no warnings, and no lme4 convergence
## messages; lme4's informational "boundary (singular) fit" message does not
## count (singularity is reported separately in `singular`).
lme4_converged <- function(conv, warns) {
    msgs <- as.character(unlist(conv$lme4$messages))
    msgs <- msgs[!grepl("^boundary \\(singular\\) fit", msgs)]
    identical(as.integer(conv$opt), 0L) && length(msgs) == 0L && length(warns) == 0L
}

glmer_record <- function(formula, data, family, K, y, trials, group_column, tight = TRUE) {
    cw <- capture_warnings(glmer(formula, data = data, family = family, nAGQ = K))
    fit <- cw$value
    beta <- fixef(fit)
    X <- getME(fit, "X")
    theta <- getME(fit, "theta")
    sd_b <- unname(attr(VarCorr(fit)[[group_column]], "stddev"))
    grp <- data[[group_column]]
    eta0 <- drop(X %*% beta)
    se_cw <- capture_warnings(sqrt(diag(as.matrix(vcov(fit)))))
    se_rx <- capture_warnings(sqrt(diag(as.matrix(vcov(fit, use.hessian = FALSE)))))
    ll_lme4 <- as.numeric(logLik(fit))
    ll_full <- marginal_loglik(family, y, trials, eta0, grp, sd_b, K)
    ll_int <- marginal_loglik_integrate(family, y, trials, eta0, grp, sd_b)
    ll_sat <- saturated_loglik(family, y, trials)
    conv <- fit@optinfo$conv
    singular <- isSingular(fit)
    n_par <- length(beta) + 1
    rec <- list(
        fixef = named(beta),
        se = named(se_cw$value),
        se_rx = named(se_rx$value),
        sd_random = sd_b,
        sigma_residual = NA,
        theta = unname(theta),
        loglik = ll_lme4,
        loglik_full = ll_full,
        loglik_full_minus_loglik = ll_full - ll_lme4,
        loglik_saturated = ll_sat,
        loglik_integrate = ll_int,
        aic = AIC(fit),
        bic = BIC(fit),
        aic_full = -2 * ll_full + 2 * n_par,
        bic_full = -2 * ll_full + log(nrow(data)) * n_par,
        df = attr(logLik(fit), "df"),
        deviance_lme4 = deviance(fit),
        singular = singular,
        converged = lme4_converged(conv, cw$warnings),
        optimizer = I(fit@optinfo$optimizer),
        optimizer_code = conv$opt,
        optimizer_message = fit@optinfo$message,
        lme4_messages = I(as.character(unlist(conv$lme4$messages))),
        warnings = I(unique(c(cw$warnings, as.character(unlist(fit@optinfo$warnings))))),
        vcov_warnings = I(unique(c(se_cw$warnings, se_rx$warnings))),
        hessian_deviance = if (!is.null(fit@optinfo$derivs$Hessian)) fit@optinfo$derivs$Hessian else NULL,
        hessian_parameters = I(c(paste0("theta_", seq_along(theta)), names(beta))),
        gradient_deviance = if (!is.null(fit@optinfo$derivs$gradient)) I(fit@optinfo$derivs$gradient) else NULL,
        ranef = ranef_list(fit, group_column),
        seconds = cw$seconds
    )
    negll <- make_negll(family, y, trials, as.matrix(X), grp, K)
    if (!singular && sd_b > 1e-4) {
        par0 <- c(unname(beta), log(sd_b))
        oi <- observed_information_se(negll, par0, names(beta))
        rec$se_observed <- if (is.null(oi)) NULL else oi$se
    }
    ## lme4 again with a tight PIRLS tolerance (see README: the default
    ## tolPwrss = 1e-7 leaves up to ~3e-4 error in the Laplace value; 1e-12 still leaves ~6e-6 for grouseticks)
    if (tight) {
        ## the tightest tolPwrss for which lme4's PIRLS does not fail
        ## (1e-14 sometimes stops with "PIRLS step-halvings failed")
        tight_errors <- character(0)
        for (tol in c(1e-14, 1e-13, 1e-12, 1e-11, 1e-10)) {
            ct <- tryCatch(capture_warnings(glmer(formula, data = data, family = family, nAGQ = K,
                                                  control = glmerControl(tolPwrss = tol))),
                           error = function(e) {
                               tight_errors <<- c(tight_errors, sprintf("tolPwrss = %g: %s", tol,
                                                                        conditionMessage(e)))
                               NULL
                           })
            if (!is.null(ct)) break
        }
        ft <- ct$value
        bt <- fixef(ft)
        sdt <- unname(attr(VarCorr(ft)[[group_column]], "stddev"))
        sct <- capture_warnings(sqrt(diag(as.matrix(vcov(ft)))))
        ct_conv <- ft@optinfo$conv
        rec$tight <- list(
            control = sprintf("glmerControl(tolPwrss = %g)", tol),
            tolPwrss = tol,
            errors_at_tighter_tolerances = I(tight_errors),
            fixef = named(bt),
            se = named(sct$value),
            sd_random = sdt,
            theta = unname(getME(ft, "theta")),
            loglik = as.numeric(logLik(ft)),
            loglik_full = marginal_loglik(family, y, trials, drop(X %*% bt), grp, sdt, K),
            singular = isSingular(ft),
            converged = lme4_converged(ct_conv, ct$warnings),
            warnings = I(unique(c(ct$warnings, as.character(unlist(ct_conv$lme4$messages)),
                                  sct$warnings))),
            seconds = ct$seconds
        )
    }
    ## singular fit: the sigma = 0 boundary model is the plain GLM
    if (singular || sd_b <= 1e-4) {
        gfit <- glm(lme4::nobars(formula), data = data, family = family)
        rec$boundary_glm <- list(
            fixef = named(coef(gfit)),
            se = named(sqrt(diag(vcov(gfit)))),
            loglik = as.numeric(logLik(gfit)),
            note = "glm() without the random effect: the sd = 0 limit of the model"
        )
    }
    ## polished optimum of our own full-constant objective, with observed-
    ## information SEs there
    if (!singular && sd_b > 1e-4) {
        par0 <- c(unname(beta), log(sd_b))
        pol <- nlminb(par0, negll, control = list(rel.tol = 1e-15, x.tol = 1e-12,
                                                   eval.max = 2000, iter.max = 1000))
        par <- pol$par
        for (it in 1:6) {
            g <- numDeriv::grad(negll, par)
            Hs <- numDeriv::hessian(negll, par)
            step <- tryCatch(solve(Hs, g), error = function(e) rep(0, length(par)))
            if (negll(par - step) <= negll(par)) par <- par - step else break
            if (max(abs(step)) < 1e-10) break
        }
        g <- numDeriv::grad(negll, par)
        p <- length(beta)
        oi <- observed_information_se(negll, par, names(beta))
        rec$polished <- list(
            fixef = setNames(as.list(par[1:p]), names(beta)),
            sd_random = exp(par[p + 1]),
            loglik_full = -negll(par),
            se = if (is.null(oi)) NULL else oi$se,
            se_log_sd = if (is.null(oi)) NULL else oi$se_log_sd,
            max_abs_gradient = max(abs(g)),
            note = paste("our own full-constant AGHQ log-likelihood maximised from lme4's",
                         "estimates (nlminb, then Newton steps with numDeriv derivatives);",
                         "max_abs_gradient is w.r.t. (beta, log sd); se from the inverse",
                         "numDeriv Hessian in (beta, log sd)")
        )
    }
    rec
}

glmmtmb_record <- function(formula, data, family, group_column) {
    fam <- switch(family, binomial = binomial(), poisson = poisson(), gaussian = gaussian())
    cw <- capture_warnings(glmmTMB(formula, data = data, family = fam, REML = FALSE))
    fit <- cw$value
    beta <- fixef(fit)$cond
    vc <- VarCorr(fit)$cond[[group_column]]
    se_cw <- capture_warnings(sqrt(diag(vcov(fit)$cond)))
    list(
        fixef = named(beta),
        se = named(se_cw$value),
        sd_random = unname(attr(vc, "stddev")),
        sigma_residual = if (family == "gaussian") sigma(fit) else NA,
        log_sd_random = unname(fit$fit$par[names(fit$fit$par) == "theta"]),
        loglik = as.numeric(logLik(fit)),
        aic = AIC(fit),
        bic = BIC(fit),
        converged = identical(as.integer(fit$fit$convergence), 0L) && isTRUE(fit$sdr$pdHess),
        optimizer_code = fit$fit$convergence,
        optimizer_message = fit$fit$message,
        pd_hessian = isTRUE(fit$sdr$pdHess),
        warnings = I(unique(c(cw$warnings, se_cw$warnings))),
        seconds = cw$seconds,
        note = "glmmTMB, Laplace approximation, ML; loglik includes all constants"
    )
}

lmer_record <- function(formula, data, y, group_column) {
    cw <- capture_warnings(lmer(formula, data = data, REML = FALSE))
    fit <- cw$value
    beta <- fixef(fit)
    X <- getME(fit, "X")
    sd_b <- unname(attr(VarCorr(fit)[[group_column]], "stddev"))
    sig <- sigma(fit)
    ll_full <- gaussian_marginal_loglik(y, drop(X %*% beta), data[[group_column]], sd_b, sig)
    ## observed information in (beta, log sd_b, log sigma)
    p <- length(beta)
    negll <- function(par) -gaussian_marginal_loglik(y, drop(X %*% par[1:p]), data[[group_column]],
                                                     exp(par[p + 1]), exp(par[p + 2]))
    par0 <- c(unname(beta), log(sd_b), log(sig))
    V <- solve(numDeriv::hessian(negll, par0))
    conv <- fit@optinfo$conv
    list(
        fixef = named(beta),
        se = named(sqrt(diag(as.matrix(vcov(fit))))),
        se_observed = setNames(as.list(sqrt(diag(V))[1:p]), names(beta)),
        sd_random = sd_b,
        sigma_residual = sig,
        theta = unname(getME(fit, "theta")),
        loglik = as.numeric(logLik(fit)),
        loglik_full = ll_full,
        loglik_full_minus_loglik = ll_full - as.numeric(logLik(fit)),
        aic = AIC(fit),
        bic = BIC(fit),
        df = attr(logLik(fit), "df"),
        singular = isSingular(fit),
        converged = lme4_converged(conv, cw$warnings),
        optimizer = I(fit@optinfo$optimizer),
        optimizer_code = conv$opt,
        optimizer_message = fit@optinfo$message,
        lme4_messages = I(as.character(unlist(conv$lme4$messages))),
        warnings = I(unique(c(cw$warnings, as.character(unlist(fit@optinfo$warnings))))),
        ranef = ranef_list(fit, group_column),
        seconds = cw$seconds,
        note = paste("lmer REML = FALSE; Laplace is exact for the Gaussian model;",
                     "theta = sd_random / sigma_residual; se from vcov() is conditional on",
                     "the variance parameters, se_observed from the full observed information")
    )
}

dataset_json <- function(name, formula, family, group_column, site_column, data,
                         fits, glmmtmb, extra = list()) {
    c(list(
        dataset = paste0(name, ".csv"),
        dataset_path = file.path("data", paste0(name, ".csv")),
        formula = paste(deparse(formula, width.cutoff = 500L), collapse = ""),
        family = family,
        link = switch(family, binomial = "logit", poisson = "log", gaussian = "identity"),
        group_column = group_column,
        site_column = site_column,
        n_obs = nrow(data),
        n_groups = length(unique(data[[group_column]])),
        n_sites = length(unique(data[[site_column]])),
        fits = fits,
        glmmtmb = glmmtmb
    ), extra, list(provenance = PROVENANCE))
}

check_nested <- function(data, group_column, site_column) {
    n_sites_per_group <- tapply(data[[site_column]], data[[group_column]],
                                function(s) length(unique(s)))
    all(n_sites_per_group == 1L)
}

run_glmm_dataset <- function(name, data, formula, family, group_column, site_column,
                             y, trials, nagq = NAGQ_GLMM, extra = list()) {
    stopifnot(check_nested(data, group_column, site_column))
    fdata <- data
    fdata[[group_column]] <- factor(fdata[[group_column]])
    fits <- list()
    for (K in nagq) {
        message(sprintf("[%s] glmer nAGQ = %d", name, K))
        fits[[paste0("nagq", K)]] <- glmer_record(formula, fdata, family, K, y, trials, group_column)
    }
    message(sprintf("[%s] glmmTMB", name))
    tmb <- glmmtmb_record(formula, fdata, family, group_column)
    js <- dataset_json(name, formula, family, group_column, site_column, data, fits, tmb, extra)
    write_json_file(js, file.path(out_dir, paste0(name, ".json")))
    invisible(js)
}

## ---------------------------------------------------------------------------
## 1. cbpp, one row per animal (Bernoulli)
## ---------------------------------------------------------------------------

cbpp_agg <- data.frame(
    herd = as.integer(cbpp$herd),
    period = as.integer(cbpp$period),
    period2 = as.integer(cbpp$period == "2"),
    period3 = as.integer(cbpp$period == "3"),
    period4 = as.integer(cbpp$period == "4"),
    incidence = as.integer(cbpp$incidence),
    size = as.integer(cbpp$size)
)
rows <- rep(seq_len(nrow(cbpp_agg)), cbpp_agg$size)
cbpp_bern <- cbpp_agg[rows, c("herd", "period", "period2", "period3", "period4")]
cbpp_bern$y <- as.integer(unlist(lapply(seq_len(nrow(cbpp_agg)), function(i)
    c(rep(1L, cbpp_agg$incidence[i]), rep(0L, cbpp_agg$size[i] - cbpp_agg$incidence[i])))))
rownames(cbpp_bern) <- NULL
stopifnot(sum(cbpp_bern$y) == sum(cbpp$incidence), nrow(cbpp_bern) == sum(cbpp$size))
cbpp_bern <- write_csv_exact(cbpp_bern, "cbpp_bernoulli")
cbpp_agg <- write_csv_exact(cbpp_agg, "cbpp_aggregated")

## aggregated cbind() fits, for the Bernoulli-expansion check
agg_check <- list()
fagg <- cbpp_agg
fagg$herd <- factor(fagg$herd)
for (K in NAGQ_GLMM) {
    message(sprintf("[cbpp_aggregated] glmer nAGQ = %d", K))
    rec <- glmer_record(cbind(incidence, size - incidence) ~ period2 + period3 + period4 + (1 | herd),
                        fagg, "binomial", K, cbpp_agg$incidence, cbpp_agg$size, "herd")
    agg_check[[paste0("nagq", K)]] <- rec[c("fixef", "se", "sd_random", "theta", "loglik",
                                            "loglik_full", "loglik_full_minus_loglik",
                                            "loglik_saturated", "loglik_integrate", "aic", "bic",
                                            "singular", "converged", "warnings", "seconds",
                                            "tight", "polished")]
}
log_binom_coef <- sum(lchoose(cbpp_agg$size, cbpp_agg$incidence))

js_cbpp <- run_glmm_dataset(
    "cbpp_bernoulli", cbpp_bern, y ~ period2 + period3 + period4 + (1 | herd),
    "binomial", "herd", "herd", cbpp_bern$y, rep(1, nrow(cbpp_bern)),
    extra = list(
        factor_levels = list(herd = I(levels(cbpp$herd)), period = I(levels(cbpp$period))),
        source = "lme4::cbpp expanded to one row per animal: each herd-period row gives `incidence` rows with y = 1 then `size - incidence` rows with y = 0",
        aggregated_check = list(
            dataset = "cbpp_aggregated.csv",
            formula = "cbind(incidence, size - incidence) ~ period2 + period3 + period4 + (1 | herd)",
            sum_log_binomial_coefficients = log_binom_coef,
            fits = agg_check,
            note = paste("Aggregated binomial fit of the same data. Estimates agree with the",
                         "Bernoulli fit to optimiser tolerance; the full log-likelihoods differ by",
                         "exactly sum(lchoose(size, incidence)) (loglik_full here includes it)")
        )
    )
)
## record the comparison in the JSON
cmp <- lapply(names(agg_check), function(k) {
    a <- agg_check[[k]]; b <- js_cbpp$fits[[k]]
    list(max_abs_fixef_diff = max(abs(unlist(a$fixef) - unlist(b$fixef))),
         abs_sd_random_diff = abs(a$sd_random - b$sd_random),
         loglik_full_aggregated_minus_bernoulli = a$loglik_full - b$loglik_full,
         loglik_lme4_aggregated_minus_bernoulli = a$loglik - b$loglik)
})
names(cmp) <- names(agg_check)
js_cbpp$aggregated_check$comparison <- cmp
write_json_file(js_cbpp, file.path(out_dir, "cbpp_bernoulli.json"))

## ---------------------------------------------------------------------------
## 2. grouseticks (Poisson)
## ---------------------------------------------------------------------------

gt <- grouseticks
stopifnot(check_nested(data.frame(b = as.integer(gt$BROOD), l = as.integer(gt$LOCATION)), "b", "l"))
gt_df <- data.frame(
    INDEX = as.integer(as.character(gt$INDEX)),
    TICKS = as.integer(gt$TICKS),
    BROOD = as.integer(gt$BROOD),
    HEIGHT = as.numeric(gt$HEIGHT),
    YEAR = as.integer(gt$YEAR),
    YEAR96 = as.integer(gt$YEAR == "96"),
    YEAR97 = as.integer(gt$YEAR == "97"),
    LOCATION = as.integer(gt$LOCATION),
    cHEIGHT = as.numeric(gt$cHEIGHT)
)
stopifnot(all(gt$TICKS == round(gt$TICKS)))
gt_df <- write_csv_exact(gt_df, "grouseticks")
run_glmm_dataset(
    "grouseticks", gt_df, TICKS ~ YEAR96 + YEAR97 + cHEIGHT + (1 | BROOD),
    "poisson", "BROOD", "LOCATION", gt_df$TICKS, rep(1, nrow(gt_df)),
    extra = list(
        factor_levels = list(BROOD = I(levels(gt$BROOD)), YEAR = I(levels(gt$YEAR)),
                             LOCATION = I(levels(gt$LOCATION))),
        source = "lme4::grouseticks; cHEIGHT as provided by lme4 (HEIGHT minus its mean); every BROOD lies in exactly one LOCATION (checked)"
    )
)

## ---------------------------------------------------------------------------
## 3. sleepstudy, random intercept (Gaussian)
## ---------------------------------------------------------------------------

run_lmm_dataset <- function(name, data, formula, group_column, site_column, y, extra = list()) {
    stopifnot(check_nested(data, group_column, site_column))
    fdata <- data
    fdata[[group_column]] <- factor(fdata[[group_column]])
    message(sprintf("[%s] lmer", name))
    fits <- list(nagq1 = lmer_record(formula, fdata, y, group_column))
    message(sprintf("[%s] glmmTMB", name))
    tmb <- glmmtmb_record(formula, fdata, "gaussian", group_column)
    js <- dataset_json(name, formula, "gaussian", group_column, site_column, data, fits, tmb, extra)
    write_json_file(js, file.path(out_dir, paste0(name, ".json")))
    invisible(js)
}

ss <- data.frame(Reaction = as.numeric(sleepstudy$Reaction),
                 Days = as.numeric(sleepstudy$Days),
                 Subject = as.integer(sleepstudy$Subject))
ss <- write_csv_exact(ss, "sleepstudy_ri")
run_lmm_dataset("sleepstudy_ri", ss, Reaction ~ Days + (1 | Subject), "Subject", "Subject",
                ss$Reaction,
                extra = list(factor_levels = list(Subject = I(levels(sleepstudy$Subject))),
                             source = "lme4::sleepstudy"))

## ---------------------------------------------------------------------------
## 4. nested Gaussian: 8 hospitals x 15 patients x 6 visits
## ---------------------------------------------------------------------------

set.seed(20240601)
n_hosp <- 8L; n_pat <- 15L; n_vis <- 6L
truth_ng <- list(beta = c("(Intercept)" = 1.0, x1 = 0.5, x2 = -0.3), sd_patient = 0.8, sigma = 0.5)
hospital_mean_x1 <- rnorm(n_hosp, 0, 0.5)
ng <- expand.grid(visit = seq_len(n_vis), patient_in_hospital = seq_len(n_pat),
                  hospital = seq_len(n_hosp))
ng$patient <- as.integer((ng$hospital - 1L) * n_pat + ng$patient_in_hospital)
b_pat <- rnorm(n_hosp * n_pat, 0, truth_ng$sd_patient)
ng$x1 <- rnorm(nrow(ng), hospital_mean_x1[ng$hospital], 1)
ng$x2 <- rbinom(nrow(ng), 1, 0.4)
ng$y <- truth_ng$beta[1] + truth_ng$beta[2] * ng$x1 + truth_ng$beta[3] * ng$x2 +
    b_pat[ng$patient] + rnorm(nrow(ng), 0, truth_ng$sigma)
ng <- data.frame(hospital = as.integer(ng$hospital), patient = ng$patient,
                 visit = as.integer(ng$visit), x1 = ng$x1, x2 = as.integer(ng$x2), y = ng$y)
ng <- write_csv_exact(ng, "nested_gaussian")
run_lmm_dataset("nested_gaussian", ng, y ~ x1 + x2 + (1 | patient), "patient", "hospital", ng$y,
                extra = list(
                    source = paste("simulated, set.seed(20240601): hospital-specific mean of x1",
                                   "~ N(0, 0.5^2); x1 ~ N(hospital mean, 1); x2 ~ Bernoulli(0.4);",
                                   "patient intercept ~ N(0, 0.8^2); residual ~ N(0, 0.5^2);",
                                   "patients numbered 1..120 globally, nested in hospitals 1..8"),
                    truth = list(fixef = named(truth_ng$beta), sd_random = truth_ng$sd_patient,
                                 sigma_residual = truth_ng$sigma)))

## ---------------------------------------------------------------------------
## 5. paper simulation settings s1..s8 (paper 000, Table 1)
## ---------------------------------------------------------------------------

paper_beta <- c("(Intercept)" = -1.5, X2 = 0.1, X3 = -0.5, X4 = -0.3, X5 = 0.4,
                X6 = -0.2, X7 = -0.25, X8 = 0.35, X9 = -0.1, X10 = 0.5)
settings <- list(c(2, 500, 1), c(2, 500, 4), c(10, 500, 1), c(10, 500, 4),
                 c(2, 30, 1), c(2, 30, 4), c(10, 30, 1), c(10, 30, 4))
paper_formula <- y ~ X2 + X3 + X4 + X5 + X6 + X7 + X8 + X9 + X10 + (1 | site)
for (s in seq_along(settings)) {
    L <- settings[[s]][1]; n <- settings[[s]][2]; v <- settings[[s]][3]
    seed <- 1000L + s
    set.seed(seed)
    site <- rep(seq_len(L), each = n)
    N <- length(site)
    Xb <- matrix(rbinom(N * 4, 1, 0.5), N, 4)
    Xu <- matrix(runif(N * 5, -1, 1.5), N, 5)
    b <- rnorm(L, 0, sqrt(v))
    X <- cbind(1, Xb, Xu)
    eta <- drop(X %*% paper_beta) + b[site]
    y <- rbinom(N, 1, plogis(eta))
    df <- data.frame(site = as.integer(site))
    for (k in 1:4) df[[paste0("X", k + 1)]] <- as.integer(Xb[, k])
    for (k in 1:5) df[[paste0("X", k + 5)]] <- Xu[, k]
    df$y <- as.integer(y)
    df$eta_true <- eta
    name <- sprintf("paper_s%d", s)
    df <- write_csv_exact(df, name)
    run_glmm_dataset(
        name, df, paper_formula, "binomial", "site", "site", df$y, rep(1, nrow(df)),
        extra = list(
            setting = list(number = s, n_sites = L, n_per_site = n, random_intercept_variance = v,
                           seed = seed),
            source = paste("simulated as in paper 000 (federated GLMM), Table 1 settings;",
                           "set.seed(seed); per site n rows; X2..X5 ~ Bernoulli(0.5) (matrix",
                           "drawn column-wise), X6..X10 ~ U(-1, 1.5), b_site ~ N(0, variance),",
                           "y ~ Bernoulli(plogis(eta_true)); eta_true includes b_site"),
            truth = list(fixef = named(paper_beta), sd_random = sqrt(v), b_site = I(b))
        )
    )
}

message("done")
