"""Certified robustness of Lipschitz classifiers and its empirical checks.

* `certified_radius`, `certified_accuracy` (`certificates`): L2 radii within which the
  prediction provably cannot change, ``margin / (c L)``.
* `pgd_l2`, `minimal_adversarial_l2` (`attacks`): white-box L2 attacks.
* `check_certificates`, `CertificateReport` (`checks`): attack every correctly classified
  point and count the certificates the attack broke.
"""

from deel_lip.robustness.attacks import LOSSES, minimal_adversarial_l2, pgd_l2
from deel_lip.robustness.certificates import certified_accuracy, certified_radius
from deel_lip.robustness.checks import ATTACKS, CertificateReport, check_certificates

__all__ = [
    "ATTACKS",
    "LOSSES",
    "CertificateReport",
    "certified_accuracy",
    "certified_radius",
    "check_certificates",
    "minimal_adversarial_l2",
    "pgd_l2",
]
