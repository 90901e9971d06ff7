r"""The paper's experiments (Appendix D), one function per figure, at book or paper scale.

Each figure has a frozen configuration dataclass whose defaults are the paper's settings
(``scale="paper"``); :meth:`preset` gives the reduced ``"book"`` settings that the experiment chapters run
in minutes on a laptop CPU. Each figure function takes a configuration and returns a dict of NumPy
arrays (axes documented in its docstring), the same dict that :func:`run` saves with
:func:`dsmlib.save_results` and :func:`load` reads back.

=========  ======================================================================================
``fig1``   learned 1-D scores vs ``s*`` for several learning rates and two noise levels
``fig2``   excess risk vs learning rate over many data sets (d = 1 or d = 10), with the sharpness
           at the end of training vs ``2 / (m eta)`` and the fraction of ReLU units still active
``fig3``   d = 2 diffusion with a time-conditioned net: samples and MMDs for a small and a large eta
``fig4``   MMD ratio vs dimension d at eta = 0.5
``mechanism``  the Fig. 2 networks (d = 1) split into collapse, SGD noise and smoothing, with their
           trajectory along training; ``mechanism2d``: the Fig. 3 networks (d = 2) with controls
``phase``  the book's (eta, sigma, n) phase diagram of the learned 1-D score (open questions)
``generation``  d = 2 memorization and distance to the true law along training, vs n and eta
=========  ======================================================================================

Every sweep of learning rates x seeds (x noise levels) is trained as one ensemble per learning
rate (a group: all its members take the same number of steps). Randomness is derived from the
seeds only (never from global state): member streams are ``numpy.random.SeedSequence`` children
of ``(seed, purpose, ...)``, so a result can be reproduced member by member.

Command line (``--help`` lists the options)::

    python -m dsmlib.experiments fig2 --scale paper --dim 1 --out results/

Modules: ``sweeps`` (Fig. 1-2), ``diffusion`` (Fig. 3-4 and the side experiments), ``decomposition``
(what keeps SGD away from ``s*``: the ``mechanism`` experiment, d = 1), ``decomposition2d`` (the
same questions for the d = 2 networks of Fig. 3: ``mechanism2d``), ``open_questions`` (the
``phase`` and ``generation`` experiments of the chapter "The open questions, measured"; their
analysis in ``open_analysis``), ``runner``
(presets, deviations, result files) and ``__main__`` (the command line). See the chapters
"Large learning rates memorize less", "What keeps SGD away from s*", "Higher dimension
memorizes less" and "The open questions, measured".
"""

from __future__ import annotations

from .diffusion import (Fig3Config, Fig4Config, fig3, fig4, fig4_combine, jitter_calibration,
                        reduction_check)
from .decomposition import MechanismConfig, collapse_by_step, decompose, mechanism
from .decomposition2d import Mechanism2dConfig, mechanism2d
from .open_questions import GenerationConfig, PhaseConfig, generation, phase
from .runner import FIGURES, deviations, load, make_config, result_path, run
from .sweeps import Fig1Config, Fig2Config, fig1, fig2


def main(argv=None) -> int:
    """The command line (see ``python -m dsmlib.experiments --help``)."""
    from .__main__ import main as _main
    return _main(argv)


__all__ = ["Fig1Config", "Fig2Config", "Fig3Config", "Fig4Config", "MechanismConfig", "fig1",
           "fig2", "fig3", "fig4", "fig4_combine", "mechanism", "decompose", "Mechanism2dConfig",
           "mechanism2d", "collapse_by_step", "reduction_check", "PhaseConfig", "phase",
           "GenerationConfig", "generation",
           "jitter_calibration", "make_config", "deviations", "result_path", "run", "load",
           "FIGURES", "main"]
