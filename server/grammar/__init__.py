"""Grammar-constrained decoding (xgrammar): compiling specs off the step loop, per-sequence
matchers, and the in-order acceptance rule for block diffusion (docs/grammar.md)."""
