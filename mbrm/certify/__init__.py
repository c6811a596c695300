"""Safety certificates (Leike et al. 2018, Sec. 6): a finished agent on a held-out suite.

:mod:`~mbrm.certify.suite` reads and checks a suite file, :mod:`~mbrm.certify.perturb`
builds a scenario's environment, :mod:`~mbrm.certify.stats` holds the exact bounds and
:mod:`~mbrm.certify.certificate` runs the agent and writes and verifies the certificate;
``mbrm certify`` (:mod:`~mbrm.certify.command`) is the command.
"""

from mbrm.certify.certificate import CertifyError, certify, to_json, to_markdown, verify
from mbrm.certify.stats import clopper_pearson_upper, mean_interval
from mbrm.certify.suite import Push, Scenario, Suite, SuiteError, load_suite, parse_suite

__all__ = [
    "CertifyError",
    "Push",
    "Scenario",
    "Suite",
    "SuiteError",
    "certify",
    "clopper_pearson_upper",
    "load_suite",
    "mean_interval",
    "parse_suite",
    "to_json",
    "to_markdown",
    "verify",
]
