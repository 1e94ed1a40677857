"""The training commands, one module per ``skiprec`` subcommand.

Each module is argument parsing and messages around one call into the library
(``training/``): ``train`` -> ``training.trainer.train``, ``evaluate`` ->
``training.evaluation.evaluate``, ``benchmark`` -> ``training.experiments``,
``train-benchmark`` -> ``training.throughput``, ``sampled-error`` ->
``training.sampled_ranks``, ``synth`` -> ``training.synthetic.generate_sessions``.
``skiprec_cli`` dispatches to their ``main(argv)``.
"""
