"""Stage 2, study: a study file parsed and checked into a StudySpec, its search space, sampler
and pruner. Uses the data stage (what a [data] table means), nothing above it.
docs/development.md maps its modules."""
