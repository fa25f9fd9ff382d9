"""idm.validator: chain building, CRL/OCSP revocation, policy (imports nothing heavy)."""

import warnings

# `cryptography` warns, on every access, about a serial number that is not positive. Such
# certificates exist (NIST PKITS 4.4.14/15 has them); idm gives them the same verdict on
# every path and says so in the verdict's own warnings instead.
warnings.filterwarnings(
    "ignore", message="Parsed a serial number which wasn't positive", category=Warning
)
