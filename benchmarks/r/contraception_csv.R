# Write mlmRev's Contraception (1,934 women, 60 districts) as the CSV both tools read:
#   Rscript benchmarks/r/contraception_csv.R OUT.csv
# `use` is written as 0/1 (1 = "Y", as glmer's binomial reads the factor); livch and urban keep
# their text levels ("0", "1", "2", "3+"; "N", "Y") so both tools make the same dummy columns.
suppressMessages(library(mlmRev))
d <- Contraception
d$use <- as.integer(d$use == "Y")
write.csv(d[, c("woman", "district", "use", "livch", "age", "urban")],
          commandArgs(TRUE)[1], row.names = FALSE)
