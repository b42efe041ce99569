"""Stage 4, search: storage, the study-wide trial budget and the worker loop that runs trials
until the budget is met, on one machine or many. Uses the stages below (data, study, train),
nothing above them. docs/development.md maps its modules."""
