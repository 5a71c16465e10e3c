"""The Modbus holding-register map shared by the gate and the PLC program (docs/plc_registers.md).

Why in code: the PLC programmer reads the document, the gate reads this module, and the tests check the
two agree; codes are stable numbers, never derived from enum order at run time.
"""

from __future__ import annotations

#: offsets inside the result block starting at ``base_register``.
SLOT_HI = 0
SLOT_LO = 1
DECISION = 2
REASON = 3
SCORE = 4
CAMERA = 5
COUNTER = 6
VALID_TOGGLE = 7
#: registers written by one FC16 request before the toggle (offsets SLOT_HI..COUNTER).
DATA_REGISTERS = 7
BLOCK_SIZE = 8

DECISION_CODES: dict[str, int] = {"accept": 1, "reject": 2}
REASON_CODES: dict[str, int] = {"ok": 0, "anomaly": 1, "timeout": 2, "overload": 3, "bad_frame": 4, "error": 5}
#: a score is written as round(score * SCORE_SCALE), clamped to 0..65535.
SCORE_SCALE = 10_000
#: camera register value when the camera is not in the config.
UNKNOWN_CAMERA = 0xFFFF


def encode_score(score: float) -> int:
    """Scale a score in [0, 1] to an unsigned 16-bit register value (NaN -> 65535, the 'worst' value)."""
    if score != score:  # NaN
        return 0xFFFF
    return max(0, min(0xFFFF, round(score * SCORE_SCALE)))


def split_u32(value: int) -> tuple[int, int]:
    """(high word, low word) of an unsigned 32-bit value: big-endian word order (mbpoll -B)."""
    value &= 0xFFFFFFFF
    return value >> 16, value & 0xFFFF


def result_registers(slot: int, decision: str, reason: str, score: float, camera_index: int, counter: int
                     ) -> list[int]:
    """The DATA_REGISTERS values written for one product, in register order."""
    if decision not in DECISION_CODES:
        raise ValueError(f"decision {decision!r} not in {sorted(DECISION_CODES)}")
    if reason not in REASON_CODES:
        raise ValueError(f"reason {reason!r} not in {sorted(REASON_CODES)}")
    hi, lo = split_u32(slot)
    camera = camera_index if 0 <= camera_index < 0xFFFF else UNKNOWN_CAMERA
    return [hi, lo, DECISION_CODES[decision], REASON_CODES[reason], encode_score(score), camera,
            counter & 0xFFFF]
