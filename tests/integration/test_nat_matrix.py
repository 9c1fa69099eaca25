"""The NAT-type matrix: every pair of the lab's NAT types, both directions, real namespaces, real
`coremesh-node` processes and a real `coremesh-relay` (TURN + keyed relay) on the emulated
internet. Each cell asserts the path theory allows (direct, or relayed) and that a message flows;
the matrix is printed with the time to first message per cell (pytest -s shows it)."""

from __future__ import annotations

import tempfile

import pytest
from coremesh_natlab import Lab
from coremesh_natlab.testing import require_root

from .nat_matrix import TYPES, dual_stack_topology, format_matrix, run_dual_stack, run_matrix, topology


@pytest.mark.timeout(300)  # a cell that never settles waits out its deadline (nat_matrix.SETTLE)
def test_nat_matrix_every_pair_of_nat_types_both_directions() -> None:
    require_root()
    types = list(TYPES)
    with tempfile.TemporaryDirectory() as tmp, Lab(topology(types)) as lab:
        cells = run_matrix(lab, types, tmp)
    print("\n" + format_matrix(cells, types))
    wrong = {key: cell for key, cell in cells.items() if not cell.ok}
    assert not wrong, "\n".join(f"{k}: {c}" for k, c in wrong.items())
    for cell in cells.values():
        if cell.expected == "relay":
            assert cell.reason, f"a relayed cell says why: {cell}"


@pytest.mark.timeout(300)
def test_dual_stack_hosts_go_direct_over_ipv6_where_ipv4_cannot() -> None:
    require_root()
    with tempfile.TemporaryDirectory() as tmp, Lab(dual_stack_topology()) as lab:
        cells = run_dual_stack(lab, tmp)
    for (dialer, listener), cell in cells.items():
        print(f"\n{dialer} -> {listener}: {cell.via}, first message after {cell.first_message_s}s")
        assert cell.ok and cell.listener_via == "direct", cell
        assert "2001:db8:" in str(cell.ping_path), cell  # the direct path is the IPv6 one
