"""Kubernetes' string-syntax rules, as apimachinery's util/validation holds them: which strings are
DNS labels and subdomains, qualified names, label values, config keys, port and environment variable
names, integers, percents, IP addresses and CIDRs.

Each ``*_errors(value)`` answers the messages Kubernetes gives for ``value`` (an empty list when it is
valid), word for word: clients and kubectl users compare them. Object validation (``validation``) and
selector parsing (``selectors``) both check strings here, so one rule has one text.
"""

from __future__ import annotations

import ipaddress
import re

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
DNS1035_LABEL_MAX = 63
LABEL_VALUE_MAX = 63
QUALIFIED_NAME_MAX = 63
PORT_NAME_MAX = 15  # an IANA service name

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + r"(\." + _DNS1123_LABEL + r")*"
_DNS1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME_PART = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = r"(" + _QUALIFIED_NAME_PART + r")?"
_CONFIG_KEY = r"[-._a-zA-Z0-9]+"
_ENV_VAR_NAME = r"[-._a-zA-Z][-._a-zA-Z0-9]*"
_PERCENT = r"[0-9]+%"

_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL)
_DNS1123_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN)
_DNS1035_LABEL_RE = re.compile(_DNS1035_LABEL)
_QUALIFIED_NAME_PART_RE = re.compile(_QUALIFIED_NAME_PART)
_LABEL_VALUE_RE = re.compile(_LABEL_VALUE)
_CONFIG_KEY_RE = re.compile(_CONFIG_KEY)
_ENV_VAR_NAME_RE = re.compile(_ENV_VAR_NAME)
_PERCENT_RE = re.compile(_PERCENT)
_INTEGER_RE = re.compile(r"-?[0-9]+")

DNS1123_LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used "
    f"for validation is '{_DNS1123_LABEL}')")
DNS1123_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    f"for validation is '{_DNS1123_SUBDOMAIN}')")
DNS1035_LABEL_MESSAGE = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
    f"regex used for validation is '{_DNS1035_LABEL}')")
_QUALIFIED_NAME_MESSAGE = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character")
_LABEL_VALUE_MESSAGE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
    f"'12345', regex used for validation is '{_LABEL_VALUE}')")
_CONFIG_KEY_MESSAGE = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
    f"'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '{_CONFIG_KEY}')")
_ENV_VAR_NAME_MESSAGE = (
    "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', "
    "or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or "
    f"'MyEnvName1', regex used for validation is '{_ENV_VAR_NAME}')")
_PERCENT_MESSAGE = (
    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or "
    f"'93%', regex used for validation is '{_PERCENT}')")
_IP_MESSAGE = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
_CIDR_MESSAGE = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"


def max_length_message(limit: int) -> str:
    return f"must be no more than {limit} characters"


def _pattern_errors(value: str, limit: int, pattern: re.Pattern, message: str) -> list[str]:
    """The messages of a syntax that is a length limit and a regex."""
    errs = [max_length_message(limit)] if len(value) > limit else []
    if not pattern.fullmatch(value):
        errs.append(message)
    return errs


def dns1123_label_errors(value: str) -> list[str]:
    """Why ``value`` is not an RFC 1123 label (namespace, container, volume and Service port names)."""
    return _pattern_errors(value, DNS1123_LABEL_MAX, _DNS1123_LABEL_RE, DNS1123_LABEL_MESSAGE)


def dns1123_subdomain_errors(value: str) -> list[str]:
    """Why ``value`` is not an RFC 1123 subdomain (most object names)."""
    return _pattern_errors(value, DNS1123_SUBDOMAIN_MAX, _DNS1123_SUBDOMAIN_RE,
                           DNS1123_SUBDOMAIN_MESSAGE)


def dns1035_label_errors(value: str) -> list[str]:
    """Why ``value`` is not an RFC 1035 label (service names)."""
    return _pattern_errors(value, DNS1035_LABEL_MAX, _DNS1035_LABEL_RE, DNS1035_LABEL_MESSAGE)


def qualified_name_errors(value: str) -> list[str]:
    """Why ``value`` is not a qualified name (``[prefix/]name``, as label and
    annotation keys are); empty list when it is."""
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
        errs = []
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs = ["prefix part must be non-empty"]
        else:
            errs = [f"prefix part {m}" for m in dns1123_subdomain_errors(prefix)]
    else:
        return [(f"a qualified name {_QUALIFIED_NAME_MESSAGE} (e.g. 'MyName',  or 'my.name',  or "
                 f"'123-abc', regex used for validation is '{_QUALIFIED_NAME_PART}') with an "
                 "optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')")]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > QUALIFIED_NAME_MAX:
        errs.append("name part " + max_length_message(QUALIFIED_NAME_MAX))
    if name and not _QUALIFIED_NAME_PART_RE.fullmatch(name):
        errs.append(f"name part {_QUALIFIED_NAME_MESSAGE} (e.g. 'MyName',  or 'my.name',  or "
                    f"'123-abc', regex used for validation is '{_QUALIFIED_NAME_PART}')")
    return errs


def label_value_errors(value: str) -> list[str]:
    """Why ``value`` is not a valid label value (empty list when it is)."""
    return _pattern_errors(value, LABEL_VALUE_MAX, _LABEL_VALUE_RE, _LABEL_VALUE_MESSAGE)


def config_key_errors(key: str) -> list[str]:
    """Why ``key`` is not a ConfigMap or Secret key (it becomes a file name)."""
    errs = _pattern_errors(key, DNS1123_SUBDOMAIN_MAX, _CONFIG_KEY_RE, _CONFIG_KEY_MESSAGE)
    if key == ".":
        errs.append("must not be '.'")
    elif key == "..":
        errs.append("must not be '..'")
    elif key.startswith(".."):
        errs.append("must not start with '..'")
    return errs


def port_name_errors(name: str) -> list[str]:
    """Why ``name`` is not an IANA service name (what named ports must be)."""
    errs = []
    if len(name) > PORT_NAME_MAX:
        errs.append(max_length_message(PORT_NAME_MAX))
    if not re.fullmatch(r"[-a-z0-9]+", name):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if "--" in name:
        errs.append("must not contain consecutive hyphens")
    if not re.search(r"[a-z]", name):
        errs.append("must contain at least one letter (a-z)")
    if name.startswith("-") or name.endswith("-"):
        errs.append("must not begin or end with a hyphen")
    return errs


def env_var_name_errors(name: str) -> list[str]:
    """Why ``name`` is not an environment variable name."""
    return [] if _ENV_VAR_NAME_RE.fullmatch(name) else [_ENV_VAR_NAME_MESSAGE]


def is_integer(text: str) -> bool:
    """True for a decimal integer, optionally negative ("-1", "007")."""
    return _INTEGER_RE.fullmatch(text) is not None


def percent_errors(text: str) -> list[str]:
    """Why ``text`` is not a percent ("25%"), as IntOrString counts may be."""
    return [] if _PERCENT_RE.fullmatch(text) else [_PERCENT_MESSAGE]


def ip_errors(text: str) -> list[str]:
    """Why ``text`` is not an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return [_IP_MESSAGE]
    return []


def cidr_errors(text: str) -> list[str]:
    """Why ``text`` is not a CIDR (host bits may be set, as Kubernetes' ParseCIDR allows)."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return [_CIDR_MESSAGE]
    return []
