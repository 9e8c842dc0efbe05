"""Pulses paired from the stand-in PLC's coil writes: a rising edge and the falling edge after it, per coil."""

from inspector.sorter.standin_plc import CoilWrite, Pulse, pair_pulses


def test_a_pulse_is_a_rising_edge_and_the_falling_edge_after_it() -> None:
    writes = [CoilWrite(10, 0, True), CoilWrite(50, 0, False), CoilWrite(90, 0, True), CoilWrite(130, 0, False)]
    assert pair_pulses(writes) == [Pulse(0, 10, 50), Pulse(0, 90, 130)]
    assert pair_pulses(writes)[0].width_ms == 40 / 1e6


def test_a_write_that_repeats_the_coils_value_is_no_edge() -> None:
    # The actuator switches the coil off on every connect; a repeated "on" does not restart the pulse.
    writes = [CoilWrite(1, 0, False), CoilWrite(10, 0, True), CoilWrite(20, 0, True), CoilWrite(50, 0, False),
              CoilWrite(60, 0, False)]
    assert pair_pulses(writes) == [Pulse(0, 10, 50)]


def test_a_coil_still_on_gives_an_open_pulse() -> None:
    assert pair_pulses([CoilWrite(10, 4, True)]) == [Pulse(4, 10, None)]
    assert pair_pulses([CoilWrite(10, 4, True)])[0].width_ms is None


def test_coils_are_paired_separately_and_can_be_picked() -> None:
    writes = [CoilWrite(10, 0, True), CoilWrite(20, 1, True), CoilWrite(30, 0, False), CoilWrite(45, 1, False)]
    assert pair_pulses(writes) == [Pulse(0, 10, 30), Pulse(1, 20, 45)]
    assert pair_pulses(writes, coil=1) == [Pulse(1, 20, 45)]
    assert pair_pulses(writes, coil=7) == []
