"""Every rule kind the engine knows: the plan model, its machine and its compiler.

Adding a kind is one line here (see :mod:`stream.engine.kinds` for the rest). ``stage`` orders
the kinds that take the same sample, event or timer tick; the order below is the one the engine
has always judged them in (single-channel limits, then joined rules, cooling, storage age,
transport), so a sample's deviation changes come out in the same order.
"""

from __future__ import annotations

from stream.engine.acceptance import AcceptanceMachine, compile_acceptance
from stream.engine.cooling import CoolingMachine, compile_cooling
from stream.engine.htst import HtstMachine, UhtMachine, compile_htst, compile_uht
from stream.engine.kinds import RuleKind
from stream.engine.limits import (
    compile_critical_limit,
    compile_rate_of_change,
    compile_stuck_sensor,
)
from stream.engine.logistics import (
    AgeMachine,
    TransportMachine,
    compile_storage_age,
    compile_transport,
)
from stream.engine.machines import CriticalLimitMachine, RateOfChangeMachine, StuckSensorMachine
from stream.engine.receipt import ReceiptMachine, compile_receipt
from stream.plan import (
    AcceptanceWindow,
    Cooling,
    CriticalLimit,
    Htst,
    RateOfChange,
    ReceiptCheck,
    StorageAge,
    StuckSensor,
    Transport,
    Uht,
)

RULE_KINDS: dict[type, RuleKind] = {
    kind.model: kind
    for kind in (
        RuleKind(
            CriticalLimit, CriticalLimitMachine, compile_critical_limit, 0, snapshot="machines"
        ),
        RuleKind(StuckSensor, StuckSensorMachine, compile_stuck_sensor, 0, snapshot="machines"),
        RuleKind(RateOfChange, RateOfChangeMachine, compile_rate_of_change, 0, snapshot="machines"),
        RuleKind(Htst, HtstMachine, compile_htst, 1, snapshot="joined"),
        RuleKind(Uht, UhtMachine, compile_uht, 1, snapshot="joined"),
        RuleKind(Cooling, CoolingMachine, compile_cooling, 2, timers=True, snapshot="cooling"),
        RuleKind(StorageAge, AgeMachine, compile_storage_age, 3, timers=True, snapshot="ages"),
        RuleKind(
            Transport, TransportMachine, compile_transport, 4, timers=True, snapshot="transports"
        ),
        RuleKind(ReceiptCheck, ReceiptMachine, compile_receipt, 5),
        RuleKind(AcceptanceWindow, AcceptanceMachine, compile_acceptance, 6, timers=True),
    )
}
