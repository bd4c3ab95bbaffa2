"""Issue 21, every numbered case through the command line: exit 2 and one line, or a correct result;
never a crash, a hang, a partial file, or a file changed outside the outputs.

The cases live in tests/untrusted_cases.py (benchmarks/cli_errors.py prints the same table).
Each runs `python -m emface.cli` in a subprocess with a timeout, so a crash or a hang fails
the case instead of the test session. The few that fit for long are marked slow.
"""

import pytest

import untrusted_cases as uc


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return uc.make_shared(str(tmp_path_factory.mktemp("shared")))


@pytest.mark.parametrize("case", [pytest.param(c, marks=[getattr(pytest.mark, m) for m in c.marks], id=uc.case_id(c))
                                  for c in uc.CASES])
def test_every_case_of_issue_21(case, shared, tmp_path):
    for need in case.needs:
        if not uc.available(need):
            pytest.skip(f"needs {need}")
    res = uc.run_case(case, str(tmp_path), shared)
    wrong = uc.judge(case, res)
    assert not wrong, f"{case.name} ({case.owner}): {'; '.join(wrong)}\nstderr:\n{res.stderr[-3000:]}"
