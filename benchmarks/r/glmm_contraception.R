# One whole-process fit of the contraception model, as a user would run it:
#   Rscript benchmarks/r/glmm_contraception.R DATA.csv glmmTMB|lme4
# Prints the log-likelihood (JSON) so the benchmark can check it is the same fit.
args <- commandArgs(TRUE)
f <- use ~ age + I(age^2) + urban + livch + (1 | district)
if (args[2] == "glmmTMB") {
  suppressMessages(library(glmmTMB))
  fit <- glmmTMB(f, data = read.csv(args[1]), family = binomial)
} else {
  suppressMessages(library(lme4))
  fit <- glmer(f, data = read.csv(args[1]), family = binomial)
}
cat(sprintf('{"loglik": %.10f}\n', as.numeric(logLik(fit))))
