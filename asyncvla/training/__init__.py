"""Training AsyncVLA (Alg. 2, then the rater): the loop, the datasets it reads and the
evaluation of its checkpoints while it trains. A client of the model package: it builds,
saves and loads models only through `asyncvla.model` and `asyncvla.checkpoint`."""
