"""Regexes for JSON Schema string ``format`` values we enforce.

Each is a sound subset of the format (everything it matches is valid), chosen to stay small as
a DFA: dates exclude year 0000, times exclude leap
seconds, URIs are ``scheme:`` + host or path + query + fragment without IP literals or userinfo
(URI references: the same, or a relative reference of that shape), emails use dot-atom local
parts and letter-only top-level domains, hostnames are ASCII labels without IDNA (``xn--``)
labels, at most four labels and 253 characters (see ``_HOSTNAME``). IPv6
addresses are hex groups without an embedded IPv4 part or zone id. JSON pointers are exact.
All but JSON pointers are ASCII, so they need no JSON escaping.
"""

from __future__ import annotations

from functools import cache

from radixrt.fsm.errors import GrammarError
from radixrt.fsm.regex_ast import Node

_YEAR = r"(?:[1-9]\d{3}|0[1-9]\d{2}|00[1-9]\d|000[1-9])"
_LEAP_YEAR = r"(?:\d\d(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = (r"(?:" + _YEAR + r"-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])"
         r"|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)|02-(?:0[1-9]|1\d|2[0-8]))"
         r"|" + _LEAP_YEAR + r"-02-29)")
_TIME = r"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|{_PCT})"
_HOST = rf"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|{_PCT})+"
_QUERY = rf"(?:{_PCHAR}|[/?])*"

_A, _H = "[A-Za-z0-9]", "[A-Za-z0-9-]"


def _label(most: int) -> str:
    """A hostname label of at most ``most`` (>= 5) letters, digits and inner hyphens, whose
    third and fourth characters are not both hyphens (those are reserved for IDNA, ``xn--``)."""
    return (f"(?:{_A}(?:{_A}|{_H}{_A}|{_H}{_H}{_A}|{_H}(?:{_A}{_H}|-{_A}){_H}{{0,{most - 5}}}"
            f"{_A})?)")


# At most 253 characters in all, by label counts and lengths: up to 3 labels of 63, or four
# with the last one up to 61 (more labels would need a length counter: thousands of states).
_HOSTNAME = (f"(?:{_label(63)}(?:\\.{_label(63)}){{0,2}}"
             f"|{_label(63)}(?:\\.{_label(63)}){{2}}\\.{_label(61)})")
_SEGMENT_NC = rf"(?:[A-Za-z0-9\-._~!$&'()*+,;=@]|{_PCT})"  # a pchar other than ":"
_RELATIVE_REF = (r"(?://(?:" + _HOST + r")?(?::\d*)?(?:/" + _PCHAR + "*)*"
                 + r"|/(?:" + _PCHAR + r"+(?:/" + _PCHAR + "*)*)?"
                 + r"|" + _SEGMENT_NC + r"+(?:/" + _PCHAR + "*)*"
                 + r")?(?:\?" + _QUERY + r")?(?:#" + _QUERY + ")?")

FORMAT_PATTERNS: dict[str, str] = {
    "date": _DATE,
    "time": _TIME,
    "date-time": _DATE + "[Tt]" + _TIME,
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "ipv4": _OCTET + r"(?:\." + _OCTET + "){3}",
    "email": _ATOM + r"(?:\." + _ATOM + ")*@(?:" + _LABEL + r"\.)+[A-Za-z]{2,63}",
    "uri": (r"[A-Za-z][A-Za-z0-9+.\-]*:(?://" + _HOST + r"(?::\d*)?(?:/" + _PCHAR + "*)*"
            + r"|/(?:" + _PCHAR + r"+(?:/" + _PCHAR + "*)*)?"
            + r"|" + _PCHAR + r"+(?:/" + _PCHAR + "*)*)?"
            + r"(?:\?" + _QUERY + r")?(?:#" + _QUERY + ")?"),
    "hostname": _HOSTNAME,
    "json-pointer": r"(?:/(?:[^/~]|~[01])*)*",
}
FORMAT_PATTERNS["uri-reference"] = f"(?:{FORMAT_PATTERNS['uri']}|{_RELATIVE_REF})"
_G = "[0-9a-fA-F]{1,4}"
# IPv6 in hex groups: eight, or fewer around one "::" (no embedded IPv4, no zone id).
FORMAT_PATTERNS["ipv6"] = (
    f"(?:(?:{_G}:){{7}}{_G}|(?:{_G}:){{1,7}}:|(?:{_G}:){{1,6}}:{_G}"
    + "".join(f"|(?:{_G}:){{1,{k}}}(?::{_G}){{1,{7 - k}}}" for k in range(5, 0, -1))
    + f"|:(?:(?::{_G}){{1,7}}|:))")


def format_node(name: str, pointer: str = "") -> Node:
    if name not in FORMAT_PATTERNS:
        raise GrammarError(f"unsupported JSON schema keyword 'format' value {name!r} at "
                           f"{pointer or '#'} (supported: {', '.join(sorted(FORMAT_PATTERNS))})")
    return _format_tree(name)


@cache
def _format_tree(name: str) -> Node:
    from radixrt.fsm.regex_parser import parse_regex

    return parse_regex(FORMAT_PATTERNS[name])
