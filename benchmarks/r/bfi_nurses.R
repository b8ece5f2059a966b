# The R BFI workflow on Nurses, whole process:
#   R_LIBS=/tmp/bfi_r/lib Rscript benchmarks/r/bfi_nurses.R Nurses.csv
# As BFI's own Nurses example: age, experien and stress standardised with the pooled means and
# SDs, a Gaussian GLM stress ~ age + gender + experien + wardtype, lambda = 0.01, one
# MAP.estimation per hospital (25 centres), then bfi() at the central server.
# Prints the combined estimates and SDs (JSON); the last entry is R's sigma2.
suppressMessages(library(BFI))
d <- read.csv(commandArgs(TRUE)[1])
for (v in c("age", "experien", "stress")) d[[v]] <- (d[[v]] - mean(d[[v]])) / sd(d[[v]])
x <- c("age", "gender", "experien", "wardtype")
Lambda <- inv.prior.cov(d[, x], lambda = 0.01, family = "gaussian")
fits <- lapply(split(d, d$hospital), function(part)
  MAP.estimation(y = part$stress, X = part[, x], family = "gaussian", Lambda = Lambda))
b <- bfi(theta_hats = lapply(fits, function(f) f$theta_hat),
         A_hats = lapply(fits, function(f) f$A_hat), Lambda = Lambda, family = "gaussian")
fmt <- function(v) paste(sprintf("%.10f", v), collapse = ", ")
cat(sprintf('{"names": ["%s"], "estimate": [%s], "sd": [%s]}\n',
            paste(names(fits[[1]]$theta_hat), collapse = '", "'), fmt(b$theta_hat), fmt(b$sd)))
