"""The live-service tools: ``skiprec loadtest`` (``load``), the soak (``soak``) and
``skiprec replay`` (``replay``), with the process launcher they and the tests share
(``processes``); see docs/BENCHMARKS.md and docs/RELIABILITY.md."""
