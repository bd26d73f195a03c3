"""mp: meta-prior adaptive reconstruction for multi-coil MRI.

Implements and extends *Meta-Prior: Meta learning for Adaptive Inverse Problem
Solvers* (Terris & Moreau, arXiv 2311.18710). The command-line tool is ``mp``
(:mod:`mpcli.cli`); everything it does is a library function in this package.
"""

__version__ = "0.1.0"
