"""dsmlib: the library behind the companion book to *Taking a Big Step* (Wu, Marion, Biau, Boyer,
COLT 2025). Import as ``import dsmlib as dsm``."""

__version__ = "0.1.0"

from .schedule import ou_mu, ou_sigma, time_from_sigma  # noqa: F401
from .optimal import (optimal_score, optimal_score_derivative, posterior_moments,  # noqa: F401
                      log_mixture_density, naive_optimal_score)
from .risk import dsm_risk, excess_risk, noise_nodes  # noqa: F401
from .io import save_results, load_results, ResultsError  # noqa: F401
