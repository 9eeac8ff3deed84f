"""Report rows say plainly whether the sliced model is smaller or (a low target) larger."""

from dynslice.report import comparison_rows, run_name


def _eval(parameters, ppl):
    return {"parameters": parameters, "perplexity": ppl}


def test_size_change_is_worded_both_ways():
    smaller = comparison_rows(_eval(1000, 10.0), _eval(750, 12.5))
    assert smaller[0] == ("parameters", "1,000", "750 (25.0% removed)")
    assert smaller[1] == ("perplexity", "10.000", "12.500")
    larger = comparison_rows(_eval(1000, 10.0), _eval(1071, 11.0))
    assert larger[0][2] == "1,071 (7.1% more than dense: shortcut matrices outweigh the slicing)"


def test_run_names_are_deterministic_and_safe():
    name = run_name("s3://bucket/models/My Model v2/", "dynamic", 0.25, "abcdef0123456789")
    assert name == "My-Model-v2-dynamic-t0.25-abcdef0123"
    assert name == run_name("s3://bucket/models/My Model v2/", "dynamic", 0.25, "abcdef0123456789")
