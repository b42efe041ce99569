"""Stage 1, data: a study's data found, read, checked and prepared as arrays a model trains on.

Built-in datasets (keras' files) and the user's own tables and arrays; the data stage knows
nothing of study files: it takes a `Source` (hpo.data.spec) and returns a `Prepared`
(hpo.data.arrays), through `hpo.data.load.load_source`. It imports only the modules at the
bottom of the package (errors, cache, backend). docs/development.md maps its modules.
"""
