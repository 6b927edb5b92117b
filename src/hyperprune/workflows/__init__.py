"""One module per command (prune, compare, evaluate, distill, compact export, apply-masks): the
orchestration a command runs, above the engine. ``hyperprune.api`` is their public face."""
