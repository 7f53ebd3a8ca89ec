import pytest

from kumosubmit.protocol.replies import with_enhanced_code


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("250 OK", "250 2.0.0 OK"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
        ("552 Error: Too much mail data", "552 5.3.4 Error: Too much mail data"),
        (
            "535 5.7.8 Authentication credentials invalid",
            "535 5.7.8 Authentication credentials invalid",
        ),
        ("220 mx ESMTP", "220 mx ESMTP"),
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
        ("334 ", "334 "),
        ("250", "250 2.0.0"),
    ],
)
def test_with_enhanced_code(reply, expected):
    assert with_enhanced_code(reply) == expected
