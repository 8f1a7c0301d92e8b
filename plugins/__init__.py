"""Native sources (plugins/ in the checkout), shipped with the package so the op can be built on first use."""
