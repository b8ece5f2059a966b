## Golden values for several random-effects terms per site (issue 17).
##
## Run from the repository root:
##     Rscript tests/golden/glmm_multi/make_golden.R
##
## Writes, into tests/golden/glmm_multi/:
##     data/<name>.csv   the exact data each model is fitted on (numeric only:
##                       factors as 0/1 columns named as lme4 names them, grouping
##                       factors as integer codes, site = groups of top-level units)
##     <name>.json       lme4 fit (glmer nAGQ = 1, default and tight PIRLS
##                       tolerance, or lmer REML = FALSE) and a glmmTMB fit (ML, Laplace)
## See README.md beside this script for the models and what was found.
##
## Only base R, lme4, glmmTMB, mlmRev and (for a parse check only) jsonlite.
## JSON is written by a small base-R writer (sprintf "%.17g"), as in
## tests/golden/glmm/make_golden.R.

suppressPackageStartupMessages({
    library(lme4)
    library(glmmTMB)
    library(mlmRev)
})

out_dir <- file.path("tests", "golden", "glmm_multi")
data_dir <- file.path(out_dir, "data")
stopifnot(dir.exists(out_dir))
dir.create(data_dir, showWarnings = FALSE)

PROVENANCE <- list(
    R_version = R.version.string,
    lme4_version = as.character(packageVersion("lme4")),
    glmmTMB_version = as.character(packageVersion("glmmTMB")),
    TMB_version = as.character(packageVersion("TMB")),
    Matrix_version = as.character(packageVersion("Matrix")),
    mlmRev_version = as.character(packageVersion("mlmRev")),
    date = format(Sys.time(), "%Y-%m-%dT%H:%M:%SZ", tz = "UTC"),
    command = "Rscript tests/golden/glmm_multi/make_golden.R"
)

## ---------------------------------------------------------------- JSON writer
json_string <- function(s) {
    s <- gsub("\\", "\\\\", s, fixed = TRUE)
    s <- gsub("\"", "\\\"", s, fixed = TRUE)
    s <- gsub("\n", "\\n", s, fixed = TRUE)
    paste0("\"", s, "\"")
}

json_scalar <- function(v) {
    if (is.na(v)) return("null")
    if (is.logical(v)) return(if (v) "true" else "false")
    if (is.character(v)) return(json_string(v))
    if (is.integer(v)) return(sprintf("%d", v))
    if (!is.finite(v)) return("null")
    sprintf("%.17g", v)
}

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
    writeLines(to_json(x), path, useBytes = TRUE)
    if (requireNamespace("jsonlite", quietly = TRUE))
        stopifnot(is.list(jsonlite::fromJSON(path, simplifyVector = FALSE)))
    invisible(path)
}

## CSV with exact doubles; the fits use the re-read data
write_csv_exact <- function(df, name) {
    path <- file.path(data_dir, paste0(name, ".csv"))
    stopifnot(all(vapply(df, is.numeric, TRUE)))
    chr <- as.data.frame(lapply(df, function(col) {
        if (is.integer(col)) sprintf("%d", col) else sprintf("%.17g", col)
    }), stringsAsFactors = FALSE)
    write.csv(chr, path, row.names = FALSE, quote = FALSE)
    back <- read.csv(path)
    for (nm in names(df))
        if (!identical(as.double(back[[nm]]), as.double(df[[nm]])))
            stop("CSV round trip not exact for column ", nm, " of ", name)
    back
}

## -------------------------------------------------------------- fit records
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

## SDs per term, named as lme4 prints the groups (e.g. "BROOD:LOCATION"): `sd` the first
## (intercept) SD of each term; `sd_all` every SD by term and effect, `corr` the
## correlations (lower triangle, column by column) by term
first_sds <- function(vc) as.list(vapply(names(vc), function(g) unname(attr(vc[[g]], "stddev"))[1], 0))
all_sds <- function(vc) lapply(vc, function(m) as.list(attr(m, "stddev")))
all_corrs <- function(vc) lapply(vc, function(m) {
    r <- attr(m, "correlation")
    if (is.null(r) || nrow(r) < 2) I(numeric(0)) else I(r[lower.tri(r)])
})
lme4_sds <- function(fit) first_sds(VarCorr(fit))

lme4_record <- function(cw) {
    fit <- cw$value
    se <- capture_warnings(sqrt(diag(as.matrix(vcov(fit)))))
    conv <- fit@optinfo$conv
    msgs <- as.character(unlist(conv$lme4$messages))
    list(
        fixef = as.list(fixef(fit)),
        se = as.list(se$value),
        sd = lme4_sds(fit),
        sd_all = all_sds(VarCorr(fit)),
        corr = all_corrs(VarCorr(fit)),
        sigma_residual = if (isGLMM(fit)) NA else sigma(fit),
        theta = as.list(getME(fit, "theta")),
        loglik = as.numeric(logLik(fit)),
        df = attr(logLik(fit), "df"),
        singular = isSingular(fit),
        converged = identical(as.integer(conv$opt), 0L) &&
            length(msgs[!grepl("^boundary \\(singular\\) fit", msgs)]) == 0L &&
            length(cw$warnings) == 0L,
        lme4_messages = I(msgs),
        warnings = I(unique(c(cw$warnings, as.character(unlist(fit@optinfo$warnings))))),
        vcov_warnings = I(unique(se$warnings)),
        seconds = cw$seconds
    )
}

glmmtmb_record <- function(formula, data, family) {
    cw <- capture_warnings(glmmTMB(formula, data = data, family = family, REML = FALSE))
    fit <- cw$value
    vc <- VarCorr(fit)$cond
    se <- capture_warnings(sqrt(diag(vcov(fit)$cond)))
    list(
        fixef = as.list(fixef(fit)$cond),
        se = as.list(se$value),
        sd = first_sds(vc),
        sd_all = all_sds(vc),
        corr = all_corrs(vc),
        sigma_residual = if (family$family == "gaussian") sigma(fit) else NA,
        loglik = as.numeric(logLik(fit)),
        converged = fit$fit$convergence == 0 && length(cw$warnings) == 0L,
        pd_hessian = fit$sdr$pdHess,
        warnings = I(unique(c(cw$warnings, se$warnings))),
        seconds = cw$seconds,
        note = "glmmTMB, Laplace approximation, ML; loglik includes all constants"
    )
}

tight_glmer <- function(formula, data, family) {
    errors <- character(0)
    for (tol in c(1e-12, 1e-11, 1e-10, 1e-9)) {
        ct <- tryCatch(capture_warnings(glmer(formula, data = data, family = family,
                                              control = glmerControl(tolPwrss = tol))),
                       error = function(e) {
                           errors <<- c(errors, sprintf("tolPwrss = %g: %s", tol,
                                                        conditionMessage(e)))
                           NULL
                       })
        if (!is.null(ct)) break
    }
    rec <- lme4_record(ct)
    rec$control <- sprintf("glmerControl(tolPwrss = %g)", tol)
    rec$errors_at_tighter_tolerances <- I(errors)
    rec
}

golden <- function(name, formula, data, family, terms, site_column, description,
                   dataset = name) {
    message(sprintf("[%s] lme4", name))
    if (family$family == "gaussian") {
        fits <- list(lmer_ml = lme4_record(capture_warnings(
            lmer(formula, data = data, REML = FALSE))))
    } else {
        fits <- list(nagq1 = lme4_record(capture_warnings(
            glmer(formula, data = data, family = family))))
        fits$nagq1_tight <- tight_glmer(formula, data, family)
    }
    message(sprintf("[%s] glmmTMB", name))
    fits$glmmTMB <- glmmtmb_record(formula, data, family)
    n_groups <- lapply(terms, function(t) length(unique(interaction(data[t$columns], drop = TRUE))))
    spec <- list(
        name = name,
        description = description,
        formula = paste(deparse(formula, width.cutoff = 500L), collapse = " "),
        family = family$family,
        link = family$link,
        dataset_path = file.path("data", paste0(dataset, ".csv")),
        site_column = site_column,
        n_obs = nrow(data),
        n_sites = length(unique(data[[site_column]])),
        terms = lapply(seq_along(terms), function(i) list(
            name = names(terms)[i], columns = I(terms[[i]]$columns),
            random = I(if (is.null(terms[[i]]$random)) "(Intercept)" else terms[[i]]$random),
            n_groups = n_groups[[i]])),
        fits = fits,
        provenance = PROVENANCE
    )
    write_json_file(spec, file.path(out_dir, paste0(name, ".json")))
}

## Rscript make_golden.R [name ...] rebuilds only the named problems (all by default)
WANTED <- commandArgs(TRUE)
wanted <- function(name) length(WANTED) == 0L || name %in% WANTED

## ------------------------------------------------------------ grouseticks
## lme4::grouseticks: ticks on red grouse chicks (403) in broods (118) at
## locations (63). HEIGHT is standardised: (HEIGHT - mean) / sd (the raw
## altitude, ~400-530 m, makes glmer warn about scaling). Sites: locations in
## order of their code, 8 per site (8 sites).
if (wanted("grouseticks")) {
data(grouseticks, package = "lme4")
g <- grouseticks
gt <- data.frame(
    TICKS = g$TICKS,
    YEAR96 = as.integer(g$YEAR == "96"),
    YEAR97 = as.integer(g$YEAR == "97"),
    HEIGHT = (g$HEIGHT - mean(g$HEIGHT)) / sd(g$HEIGHT),
    LOCATION = as.integer(g$LOCATION),
    BROOD = as.integer(g$BROOD)
)
gt$site <- (gt$LOCATION - 1L) %/% 8L + 1L
gt <- write_csv_exact(gt, "grouseticks")
golden("grouseticks", TICKS ~ YEAR96 + YEAR97 + HEIGHT + (1 | LOCATION/BROOD), gt, poisson(),
       list("BROOD:LOCATION" = list(columns = c("BROOD", "LOCATION")),
            "LOCATION" = list(columns = "LOCATION")),
       "site", "lme4::grouseticks, HEIGHT standardised, YEAR as 0/1 columns; 8 sites of locations")
}

## ------------------------------------------------------------- egsingle
## mlmRev::egsingle: math scores of 1721 children in 60 schools, years -2.5..2.5.
## Sites: schools in order of their code, 10 per site (6 sites).
if (wanted("egsingle") || wanted("egsingle_slopes")) {
data(egsingle, package = "mlmRev")
e <- egsingle
eg <- data.frame(
    math = e$math,
    year = e$year,
    schoolid = as.integer(e$schoolid),
    childid = as.integer(e$childid)
)
eg$site <- (eg$schoolid - 1L) %/% 10L + 1L
eg <- write_csv_exact(eg, "egsingle")
if (wanted("egsingle")) golden("egsingle", math ~ year + (1 | schoolid/childid), eg, gaussian(),
       list("childid:schoolid" = list(columns = c("childid", "schoolid")),
            "schoolid" = list(columns = "schoolid")),
       "site", "mlmRev::egsingle; lmer(REML = FALSE); 6 sites of 10 schools")
## the same with a random slope of year at both levels
if (wanted("egsingle_slopes")) golden("egsingle_slopes", math ~ year + (1 + year | schoolid/childid), eg, gaussian(),
       list("childid:schoolid" = list(columns = c("childid", "schoolid"),
                                      random = c("(Intercept)", "year")),
            "schoolid" = list(columns = "schoolid", random = c("(Intercept)", "year"))),
       "site", "mlmRev::egsingle with random slopes of year; lmer(REML = FALSE); 6 sites",
       dataset = "egsingle")
}

## -------------------------------------------------------------- guImmun
## mlmRev::guImmun: immunisation of 2159 children of 1595 mothers in 161
## communities (Guatemala). Factors as treatment-contrast 0/1 columns named as
## lme4 names them. Sites: communities in order of their code, 20 per site (9 sites).
if (wanted("guImmun")) {
data(guImmun, package = "mlmRev")
gu <- guImmun
mm <- model.matrix(~ kid2p + mom25p + ord + ethn + momEd + husEd + momWork + rural + pcInd81, gu)
im <- data.frame(immun = as.integer(gu$immun == "Y"), mm[, -1, drop = FALSE], check.names = FALSE)
im$mom <- as.integer(gu$mom)
im$comm <- as.integer(gu$comm)
im$site <- (im$comm - 1L) %/% 20L + 1L
im <- write_csv_exact(im, "guImmun")
fixed <- paste(setdiff(colnames(mm), "(Intercept)"), collapse = " + ")
golden("guImmun", as.formula(paste("immun ~", fixed, "+ (1 | mom) + (1 | comm)")), im, binomial(),
       list("mom" = list(columns = "mom"), "comm" = list(columns = "comm")),
       "site", "mlmRev::guImmun, factors as 0/1 columns; glmer nAGQ = 1; 9 sites of communities")
}
## ------------------------------------------------------------ Penicillin
## lme4::Penicillin: diameters for 6 samples crossed with 24 plates. The factors
## are crossed, so all rows are one block: one site.
if (wanted("penicillin")) {
data(Penicillin, package = "lme4")
pen <- data.frame(diameter = Penicillin$diameter, plate = as.integer(Penicillin$plate),
                  sample = as.integer(Penicillin$sample), site = 1L)
pen <- write_csv_exact(pen, "penicillin")
golden("penicillin", diameter ~ 1 + (1 | plate) + (1 | sample), pen, gaussian(),
       list("plate" = list(columns = "plate"), "sample" = list(columns = "sample")),
       "site", "lme4::Penicillin, crossed plate x sample; lmer(REML = FALSE); one site")
}

## ------------------------------------------------- simulated boundary fits
## Wards in hospitals: y ~ x + (1 | hospital/ward), the ward variance truly 0
## (hospital SD 0.7). 12 hospitals x 4 wards x 10 rows, x = round(rnorm, 6),
## eta = 0.3 + 0.5 x + b_hospital; sites = pairs of hospitals (6 sites). Each
## takes the first seed from 1 on whose default lme4 fit is singular with the
## ward SD exactly 0 and no warnings (the seeds tried are recorded).
simulate_wards <- function(seed, family) {
    set.seed(seed)
    hospital <- rep(1:12, each = 40)
    ward <- rep(1:48, each = 10)
    x <- round(rnorm(480), 6)
    eta <- 0.3 + 0.5 * x + rnorm(12, 0, 0.7)[hospital]
    y <- if (family == "poisson") rpois(480, exp(eta)) else round(eta + rnorm(480, 0, 1), 6)
    data.frame(y = y, x = x, hospital = hospital, ward = ward, site = (hospital - 1L) %/% 2L + 1L)
}
ward_formula <- y ~ x + (1 | hospital/ward)
for (fam in c("poisson", "gaussian")[c(wanted("poisson_ward_boundary"),
                                       wanted("gaussian_ward_boundary"))]) {
    tried <- integer(0)
    for (seed in 1:50) {
        tried <- c(tried, seed)
        d <- simulate_wards(seed, fam)
        cw <- if (fam == "poisson") capture_warnings(glmer(ward_formula, data = d, family = poisson()))
              else capture_warnings(lmer(ward_formula, data = d, REML = FALSE))
        th <- getME(cw$value, "theta")
        if (isSingular(cw$value) && th[["ward:hospital.(Intercept)"]] == 0 &&
            th[["hospital.(Intercept)"]] > 0.1 && length(cw$warnings) == 0L) break
    }
    name <- paste0(fam, "_ward_boundary")
    d <- write_csv_exact(d, name)
    golden(name, ward_formula, d, if (fam == "poisson") poisson() else gaussian(),
           list("ward:hospital" = list(columns = c("ward", "hospital")),
                "hospital" = list(columns = "hospital")),
           "site", sprintf(paste("simulated wards in hospitals, ward variance 0; seed %d",
                                 "(first singular of seeds %s)"), seed,
                           paste(tried, collapse = ",")))
}
message("done")
