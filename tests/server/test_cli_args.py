"""`radixrt serve|generate` turn an invalid flag combination into a usage error, not a traceback."""

import pytest

from radixrt.cli import main


@pytest.mark.parametrize("command", ["serve", "generate"])
def test_invalid_combination_is_a_usage_error(command, capsys):
    argv = [command, "--dp-size", "2", "--tp-size", "2"]
    if command == "generate":
        argv.insert(1, "hello")
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"radixrt {command}: error:" in err and "dp_size" in err
    assert "Traceback" not in err


def test_engine_refuses_dp_size():
    from radixrt.entrypoints.engine import Engine

    with pytest.raises(ValueError, match="dp_size > 1 needs the server"):
        Engine(dp_size=2)
