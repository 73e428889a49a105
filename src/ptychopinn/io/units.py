"""Physical units of a far-field scan: wavelength and the object pixel size.

In the far field (Fraunhofer) a detector of ``n`` pixels of side ``p`` at distance ``z``
samples the object's exit wave at ``lambda z / (n p)``: that is the object pixel size of
every reconstruction made from ``n x n`` patterns. Cropping the detector to fewer pixels makes
the object pixels larger; binning ``b x b`` pixels into one keeps them and shrinks the field
of view ``n`` times ``lambda z / (n p)`` by ``b``.
"""

from __future__ import annotations

import math

from ptychopinn.errors import DataError

PLANCK_EV_S = 4.135667696e-15
SPEED_OF_LIGHT_M_S = 299792458.0
ELECTRON_VOLT_J = 1.602176634e-19


def wavelength_m(energy_eV: float) -> float:
    """Photon wavelength for a photon energy.

    >>> round(wavelength_m(10_000.0) * 1e10, 4)
    1.2398
    """
    return PLANCK_EV_S * SPEED_OF_LIGHT_M_S / float(energy_eV)


def object_pixel_size_m(
    energy_eV: float, distance_m: float, detector_pixel_m: float, n: int
) -> float:
    """``lambda z / (n p)``: the object pixel size of ``n x n`` far-field patterns.

    >>> round(object_pixel_size_m(10_000.0, 2.0, 75e-6, 256) * 1e9, 2)
    12.92
    """
    for name, value in (
        ("photon energy [eV]", energy_eV),
        ("detector distance [m]", distance_m),
        ("detector pixel size [m]", detector_pixel_m),
    ):
        if not (math.isfinite(value) and value > 0):
            raise DataError(f"{name}: expected a positive finite number, got {value}")
    return wavelength_m(energy_eV) * distance_m / (n * detector_pixel_m)


def format_length(metres: float) -> str:
    """A length with a readable unit.

    >>> format_length(1.29e-8), format_length(2.5e-6), format_length(3e-3)
    ('12.9 nm', '2.5 µm', '3 mm')
    """
    for unit, scale in (("m", 1.0), ("mm", 1e-3), ("µm", 1e-6), ("nm", 1e-9)):
        if abs(metres) >= scale:
            return f"{metres / scale:.3g} {unit}"
    return f"{metres / 1e-12:.3g} pm"
