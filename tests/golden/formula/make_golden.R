# Golden model matrices for securefed's formula parser (core_stats/formula/).
# Run from this folder: Rscript make_golden.R
# Data: glmmTMB's Owls and lme4's cbpp, written as CSV and read back with
# read.csv as a user would; model.matrix's column names and values are stored.
suppressPackageStartupMessages({library(lme4); library(glmmTMB); library(jsonlite)})
owls <- glmmTMB::Owls[, c("Nest", "FoodTreatment", "SexParent", "ArrivalTime", "NegPerChick",
                          "BroodSize", "SiblingNegotiation")]
write.csv(owls, "data/owls.csv", row.names = FALSE)
write.csv(lme4::cbpp, "data/cbpp.csv", row.names = FALSE)
owls <- read.csv("data/owls.csv")
cbpp <- read.csv("data/cbpp.csv")
cases <- list(
  list(data = "owls", formula = "NegPerChick ~ FoodTreatment * SexParent + ArrivalTime"),
  list(data = "owls", formula = "NegPerChick ~ 0 + FoodTreatment:SexParent"),
  list(data = "owls", formula = "NegPerChick ~ FoodTreatment + ArrivalTime:SexParent + I(ArrivalTime^2) + log(BroodSize)"),
  list(data = "owls", formula = "NegPerChick ~ (FoodTreatment + SexParent + ArrivalTime)^2 - FoodTreatment:ArrivalTime"),
  list(data = "owls", formula = "NegPerChick ~ SexParent/ArrivalTime"),
  list(data = "owls", formula = "NegPerChick ~ ArrivalTime:FoodTreatment"),
  list(data = "owls", formula = "NegPerChick ~ 0 + SexParent + FoodTreatment"),
  list(data = "owls", formula = "NegPerChick ~ ArrivalTime*FoodTreatment*SexParent"),
  list(data = "owls", formula = "NegPerChick ~ I((ArrivalTime - 24)/2) + sqrt(BroodSize) + exp(-ArrivalTime/30)"),
  list(data = "owls", formula = "NegPerChick ~ 1 + FoodTreatment"),
  list(data = "owls", formula = "NegPerChick ~ factor(BroodSize) + FoodTreatment:factor(BroodSize)"),
  list(data = "cbpp", formula = "incidence ~ factor(period) + log(size)"),
  list(data = "cbpp", formula = "incidence ~ herd:factor(period) - 1"),
  list(data = "cbpp", formula = "incidence ~ I(size^2) + I(size * period) + log(size, 2)")
)
out <- lapply(cases, function(case) {
  d <- get(case$data)
  mm <- model.matrix(as.formula(case$formula), d)
  list(data = case$data, formula = case$formula, names = colnames(mm),
       matrix = unname(as.matrix(mm)))
})
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE), "model_matrices.json")
