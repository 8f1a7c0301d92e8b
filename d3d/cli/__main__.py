"""``python -m d3d.cli``: the same as the ``d3d`` executable."""

from d3d.cli import console_main

console_main()
