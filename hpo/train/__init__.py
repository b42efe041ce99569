"""Stage 3, train: a trial's parameters → a Keras model, trained one compiled call per epoch,
each epoch reported to Optuna. Uses the data and study stages, nothing above them.

Nothing is imported here: importing a module of this stage imports Keras, which only a
process that trains should pay for. docs/development.md maps its modules.
"""
