"""dsmlib: the library behind the executable companion to *Taking a Big Step: Large Learning Rates
in Denoising Score Matching Prevent Memorization* (Wu, Marion, Biau, Boyer, COLT 2025).

Import as ``import dsmlib as dsm``. Conventions: forward OU SDE ``dX = -X dt + sqrt(2) dB``,
``mu(t) = exp(-t)``, ``sigma(t) = sqrt(1 - exp(-2t))``; 1-D data has shape ``(n,)``, d-dimensional
data ``(n, d)``; an ensemble of K networks is a leading axis ``K``; randomness only through explicit
``generator=`` arguments.

The submodules ``experiments`` (the paper's figures), ``plotting``, ``playground`` and ``widgets``
(needs ipywidgets) are loaded on first use: ``dsm.experiments.fig1(...)``.
"""

import importlib as _importlib

__version__ = "0.1.0"

from .schedule import ou_mu, ou_sigma, time_from_sigma
from .optimal import (optimal_score, optimal_score_derivative, posterior_moments,
                      log_mixture_density, naive_optimal_score)
from .risk import dsm_risk, excess_risk, noise_nodes
from .networks import TwoLayerScoreNet, make_generators, active_fraction
from .training import train_sgd, TrainResult
from .stability import relu_net_risk, sharpness, stability_threshold
from .gauss_newton import gauss_newton_matrix, gauss_newton_sharpness
from .gradient_descent import full_batch_gd, perturbation_test
from .theory import (min_gap, theorem_lr_threshold, theorem_excess_bound, tv_lower_bound,
                     tv_lower_bound_condition, optimal_risk_bound, prop6_bound_terms,
                     prop6_tv_upper_bound, prop7_tv_lower_bound, prop7_conditions,
                     sigma2_condition, sigma4_condition, theorem_checklist)
from .posterior_bounds import (prop2_midpoint_bound, prop2_near_data_bound, cor3_derivative_gap,
                               posterior_near_data_lemma, posterior_midpoint_lemma)
from .regularity import tv_weight_pieces, tv_weight, weighted_tv
from .sampling import reverse_sde_sample, reverse_time_grid, optimal_score_fn
from .metrics import (mmd, nearest_neighbor_distances, memorization_fraction, fitted_gaussian,
                      energy_distance, sliced_wasserstein)
from .timenet import TimeScoreNet
from .timenet_training import train_time_score_net
from .io import save_results, load_results, ResultsError

_LAZY = ("experiments", "plotting", "playground", "widgets")


def __getattr__(name):
    if name in _LAZY:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dsmlib' has no attribute {name!r}")


__all__ = [
    "ou_mu", "ou_sigma", "time_from_sigma",
    "optimal_score", "optimal_score_derivative", "posterior_moments", "log_mixture_density",
    "naive_optimal_score",
    "dsm_risk", "excess_risk", "noise_nodes",
    "TwoLayerScoreNet", "make_generators", "active_fraction", "train_sgd", "TrainResult",
    "relu_net_risk", "sharpness", "stability_threshold", "gauss_newton_matrix",
    "gauss_newton_sharpness", "full_batch_gd", "perturbation_test",
    "min_gap", "theorem_lr_threshold", "theorem_excess_bound", "tv_lower_bound",
    "tv_lower_bound_condition", "optimal_risk_bound", "prop2_midpoint_bound",
    "prop2_near_data_bound", "cor3_derivative_gap", "posterior_near_data_lemma",
    "posterior_midpoint_lemma", "prop6_bound_terms", "prop6_tv_upper_bound",
    "prop7_tv_lower_bound", "prop7_conditions", "sigma2_condition", "sigma4_condition",
    "theorem_checklist",
    "tv_weight_pieces", "tv_weight", "weighted_tv",
    "reverse_sde_sample", "reverse_time_grid", "optimal_score_fn",
    "mmd", "nearest_neighbor_distances", "memorization_fraction", "fitted_gaussian",
    "energy_distance", "sliced_wasserstein",
    "TimeScoreNet", "train_time_score_net",
    "save_results", "load_results", "ResultsError",
    *_LAZY,
]
