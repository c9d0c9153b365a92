"""DICOM User Identity Negotiation (PS3.7 D.3.3.7): who the requestor's user is.

The A-ASSOCIATE-RQ may carry a user name (type 1), a user name and passcode
(type 2), a Kerberos ticket (3), a SAML assertion (4) or a JSON Web Token
(5). Types 2 and 5 are checked against the ``[auth]`` table's users and
token keys, the same as DICOMweb's (:mod:`engine.credentials`), and the
association may then do only what that user's roles allow: ``write`` to
store, ``read`` to query and retrieve (on top of the calling AE's own
rules). A user name alone proves nothing, and we have no Kerberos or SAML
verifier: those identities grant nothing, and do not satisfy
``[dicom] require_user_identity = true``.

Refusals are A-ASSOCIATE-RJ rejected-permanent, source service-provider
(ACSE), no reason given (PS3.7 D.3.3.7.2: an authorisation failure). When
the requestor asks for a positive response, the A-ASSOCIATE-AC carries a
zero-length server response: we issue no ticket or token of our own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pynetdicom.pdu_primitives import UserIdentityNegotiation

from engine.credentials import (
    AuthSettings,
    BadCredentials,
    Identity,
    VerifiedLogins,
    check_password,
    check_token,
)

log = logging.getLogger("engine.net")

USERNAME, USERNAME_AND_PASSCODE, KERBEROS, SAML, JWT = 1, 2, 3, 4, 5
REJECT_USER = (0x01, 0x02, 0x01)  # permanent, service-provider (ACSE), no reason given
_NAMES = {USERNAME: "a user name alone", KERBEROS: "a Kerberos ticket", SAML: "a SAML assertion"}


class UserRefused(Exception):
    """The association is refused for its user identity; the message says why (for the log)."""


@dataclass(frozen=True, slots=True)
class User:
    """The outcome of one negotiation: who, and the AC sub-item to send back (if asked)."""

    identity: Identity | None  # None: no verified user; the AE's rules alone apply
    response: UserIdentityNegotiation | None

    @property
    def roles(self) -> frozenset[str] | None:
        return None if self.identity is None else self.identity.roles


class UserCheck:
    """Checks the User Identity sub-item of each association; remembers verified passcodes.

    Parameters
    ----------
    auth
        The ``[auth]`` table: users, their password hashes and roles, token keys.
    required
        ``[dicom] require_user_identity``: refuse associations without a verified user.
    """

    def __init__(self, auth: AuthSettings, required: bool) -> None:
        self.auth = auth
        self.required = required
        self._verified = VerifiedLogins()  # a modality opens many associations

    def check(self, items: list[Any]) -> User:
        """The user of an A-ASSOCIATE-RQ whose user information is `items`.

        Raises
        ------
        UserRefused
            No usable identity while one is required, or one that does not verify.
        """
        item = next((i for i in items if isinstance(i, UserIdentityNegotiation)), None)
        if item is None:
            if self.required:
                raise UserRefused("no user identity, and require_user_identity is on")
            return User(None, None)
        kind = int(item.user_identity_type or 0)
        primary = bytes(item.primary_field or b"")
        if kind == USERNAME_AND_PASSCODE:
            identity = self._password(primary, bytes(item.secondary_field or b""))
        elif kind == JWT:
            identity = self._token(primary)
        elif kind in _NAMES:
            if self.required:
                raise UserRefused(f"{_NAMES[kind]} does not authenticate: send a user name and "
                                  "passcode (type 2) or a JSON Web Token (type 5)")  # fmt: skip
            log.info("user identity type %d (%s) ignored: it grants nothing", kind, _NAMES[kind])
            identity = None
        else:
            raise UserRefused(f"user identity type {kind} is not defined (PS3.7 D.3.3.7)")
        response = None
        if item.positive_response_requested and identity is not None:
            response = UserIdentityNegotiation()
            response.server_response = b""
        return User(identity, response)

    def _password(self, name: bytes, passcode: bytes) -> Identity:
        presented = name + b"\0" + passcode
        known = self._verified.get(presented)
        if known is not None:
            return known
        try:
            identity = check_password(self.auth, name.decode("utf-8", "replace"),
                                      passcode.decode("utf-8", "replace"))  # fmt: skip
        except BadCredentials as exc:
            raise UserRefused(f"user {name.decode('utf-8', 'replace')!r}: {exc}") from exc
        self._verified.add(presented, identity)
        return identity

    def _token(self, token: bytes) -> Identity:
        try:
            return check_token(self.auth, token.decode("ascii", "replace").strip())
        except BadCredentials as exc:
            raise UserRefused(str(exc)) from exc
