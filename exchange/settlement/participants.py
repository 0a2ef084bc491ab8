"""The participants registry: registration (once per reference through the API), profile updates,
bank-account and poor-household verification, cooperative membership and consent to financiers.

Functions of the clearing's state (state.py), the handlers ``Clearing`` (clearing.py) gives the core.
"""

import hashlib

from exchange.commands import (
    RegisterParticipant,
    SetConsent,
    SetCooperativeMembers,
    UpdateParticipant,
    VerifyBankAccount,
    VerifyPoorHousehold,
)
from exchange.events import (
    ConsentChanged,
    CooperativeMembersSet,
    ParticipantChanged,
)
from exchange.settlement import rules
from exchange.settlement.model import (
    FinalKind,
    Participant,
    Registration,
)
from exchange.settlement.state import (
    _ENCODER,
    MAX_REF_LEN,
    ROLE,
    SELLING_ROLES,
    TRADING_ROLES,
    ClearingState,
    R,
)


def participant_event(cl: ClearingState, who: Participant, by: int, ts_ns: int) -> ParticipantChanged:
    return ParticipantChanged(0, ts_ns, who.participant_id, who.role, who.name, who.bank_account[-4:],
                              who.bank_verified, who.poor_verified, by)


def register_participant(cl: ClearingState, cmd: RegisterParticipant, out: list) -> None:
    ref = f"U{cmd.subject_id}"
    if not cl._is_operator(cmd.participant_id):
        return cl._reject(cmd, R.NOT_AUTHORIZED, ref, out)
    if not _valid_profile(cmd):
        return cl._reject(cmd, R.INVALID_PARTICIPANT, ref, out)
    if cmd.registration_ref:
        return register_with_reference(cl, cmd, out)
    existing = cl.participants.get(cmd.subject_id)
    if existing is not None:
        same = (existing.role, existing.name, existing.id_number_masked) == (cmd.role, cmd.name,
                                                                            cmd.id_number_masked)
        if not same:
            return cl._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
        out.append(participant_event(cl, existing, cmd.participant_id, cmd.ts_ns))
        return None
    who = _add_participant(cl, cmd)
    out.append(participant_event(cl, who, cmd.participant_id, cmd.ts_ns))
    return None


def _add_participant(cl: ClearingState, cmd: RegisterParticipant) -> Participant:
    """Record the participant a registration makes, with what is derived from it (``_sellers``,
    ``_traders``: state.py, ``_rebuild_indexes``) and its bank codes; the record."""
    who = Participant(cmd.subject_id, cmd.role, cmd.name.strip(), cmd.id_number_masked, cmd.bank_account.strip(),
                      False, cmd.poor_registration_no.strip(), False)
    cl.participants[cmd.subject_id] = who
    if who.role in SELLING_ROLES:
        cl._sellers.add(cmd.subject_id)  # check_sell's answer
    if who.role in TRADING_ROLES:
        cl._traders.add(cmd.subject_id)  # check_buy's role check
    if cmd.bank_code or cmd.branch_code:
        cl.bank_codes[cmd.subject_id] = (cmd.bank_code, cmd.branch_code)
    return who


def register_with_reference(cl: ClearingState, cmd: RegisterParticipant, out: list) -> None:
    """A registration through the API: once per reference; a repeat with the same profile answers the
    participant the first one made (whatever id and key the repeat carries), another profile is refused."""
    ref = cmd.registration_ref
    digest = _profile_digest(cmd)
    done = cl.registrations.get(ref)
    if done is not None:
        if done.profile_digest != digest:
            return cl._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
        out.append(participant_event(cl, cl.participants[done.participant_id], cmd.participant_id, cmd.ts_ns))
        return None
    # the key's row is written with the batch (the api_keys table's CHECKs): refused here, never there
    if (len(ref) > MAX_REF_LEN or not 8 <= len(cmd.api_key) <= 64 or len(cmd.api_secret) < 16
            or cmd.subject_id in cl.participants):
        return cl._reject(cmd, R.INVALID_PARTICIPANT, ref, out)
    who = _add_participant(cl, cmd)
    cl.registrations[ref] = Registration(ref, cmd.subject_id, digest, cmd.api_key, cmd.ts_ns)
    cl._final_at(cmd.ts_ns, FinalKind.REGISTRATION, ref)  # a repeat is recognised for the retention window
    out.append(participant_event(cl, who, cmd.participant_id, cmd.ts_ns))
    return None


def update_participant(cl: ClearingState, cmd: UpdateParticipant, out: list) -> None:
    ref = f"U{cmd.subject_id}"
    who = cl.participants.get(cmd.subject_id)
    if cmd.participant_id != cmd.subject_id and not cl._is_operator(cmd.participant_id):
        return cl._reject(cmd, R.NOT_AUTHORIZED, ref, out)
    if who is None:
        return cl._reject(cmd, R.UNKNOWN_PARTICIPANT, ref, out)
    if (not cmd.name.strip() or len(cmd.name) > 100 or len(cmd.bank_account) > 64
            or not _valid_bank_codes(cmd.bank_code, cmd.branch_code)):
        return cl._reject(cmd, R.INVALID_PARTICIPANT, ref, out)
    bank, name, codes = cmd.bank_account.strip(), cmd.name.strip(), (cmd.bank_code, cmd.branch_code)
    if bank != who.bank_account or name != who.name or codes != cl.bank_codes.get(who.participant_id, ("", "")):
        # The bank checks the account against its holder's name: a new account (or bank, or branch),
        # or a new name on the old one, must be verified again before money goes there.
        who.bank_verified = False
    who.bank_account, who.name = bank, name
    if codes[0] or codes[1]:
        cl.bank_codes[who.participant_id] = codes
    else:
        cl.bank_codes.pop(who.participant_id, None)
    out.append(participant_event(cl, who, cmd.participant_id, cmd.ts_ns))
    return None


def verified_subject(cl: ClearingState, cmd: VerifyBankAccount | VerifyPoorHousehold, out: list) -> Participant | None:
    """The participant an operator's verification names, or None after rejecting the command."""
    if not cl._is_operator(cmd.participant_id):
        cl._reject(cmd, R.NOT_AUTHORIZED, f"U{cmd.subject_id}", out)
        return None
    who = cl.participants.get(cmd.subject_id)
    if who is None:
        cl._reject(cmd, R.UNKNOWN_PARTICIPANT, f"U{cmd.subject_id}", out)
    return who


def verify_bank_account(cl: ClearingState, cmd: VerifyBankAccount, out: list) -> None:
    ref = f"U{cmd.subject_id}"
    who = verified_subject(cl, cmd, out)
    if who is None:
        return None
    if not who.bank_account or cmd.bank_account.strip() != who.bank_account:
        return cl._reject(cmd, R.INVALID_PARTICIPANT, ref, out)
    who.bank_verified = True
    out.append(participant_event(cl, who, cmd.participant_id, cmd.ts_ns))
    return None


def verify_poor_household(cl: ClearingState, cmd: VerifyPoorHousehold, out: list) -> None:
    ref = f"U{cmd.subject_id}"
    who = verified_subject(cl, cmd, out)
    if who is None:
        return None
    number = cmd.registration_no.strip()
    if who.role != ROLE.FARMER or (cmd.verified and not number) or len(number) > 32:
        return cl._reject(cmd, R.INVALID_PARTICIPANT, ref, out)
    if cmd.verified:
        who.poor_registration_no = number
    who.poor_verified = cmd.verified
    out.append(participant_event(cl, who, cmd.participant_id, cmd.ts_ns))
    return None


def set_cooperative_members(cl: ClearingState, cmd: SetCooperativeMembers, out: list) -> None:
    ref = f"U{cmd.cooperative_id}"
    if not cl._is_operator(cmd.participant_id):
        return cl._reject(cmd, R.NOT_AUTHORIZED, ref, out)
    coop = cl.participants.get(cmd.cooperative_id)
    if coop is None:
        return cl._reject(cmd, R.UNKNOWN_PARTICIPANT, ref, out)
    if coop.role != ROLE.COOPERATIVE or not valid_shares(cl, cmd.member_ids, cmd.shares_bps):
        return cl._reject(cmd, R.INVALID_SHARES, ref, out)
    coop.member_ids = list(cmd.member_ids)
    coop.shares_bps = list(cmd.shares_bps)
    out.append(CooperativeMembersSet(0, cmd.ts_ns, cmd.cooperative_id, cmd.member_ids, cmd.shares_bps))
    return None


def valid_shares(cl: ClearingState, member_ids: tuple[int, ...], shares_bps: tuple[int, ...]) -> bool:
    return (
        len(member_ids) == len(shares_bps)
        and len(set(member_ids)) == len(member_ids)
        and all(cl._has_role(m, (ROLE.FARMER,)) for m in member_ids)
        and all(share > 0 for share in shares_bps)
        and sum(shares_bps) <= rules.BPS
    )


def set_consent(cl: ClearingState, cmd: SetConsent, out: list) -> None:
    ref = f"F{cmd.financier_id}"
    who = cl.participants.get(cmd.participant_id)
    if who is None or who.role not in TRADING_ROLES:
        return cl._reject(cmd, R.UNKNOWN_PARTICIPANT, ref, out)
    if not cl._has_role(cmd.financier_id, (ROLE.FINANCIER,)):
        return cl._reject(cmd, R.UNKNOWN_PARTICIPANT, ref, out)
    consents = set(who.consents)
    if cmd.granted:
        consents.add(cmd.financier_id)
    else:
        consents.discard(cmd.financier_id)
    who.consents = sorted(consents)
    out.append(ConsentChanged(0, cmd.ts_ns, cmd.participant_id, cmd.financier_id, cmd.granted))
    return None


def _valid_profile(cmd: RegisterParticipant) -> bool:
    """A name, a masked ID number (with ``*``, never a full one), and a poor-household number only
    for a farmer."""
    masked = cmd.id_number_masked
    return (
        cmd.subject_id > 0
        and bool(cmd.name.strip())
        and len(cmd.name) <= 100
        and "*" in masked
        and len(masked) <= 32
        and sum(ch.isdigit() for ch in masked) <= 8
        and len(cmd.bank_account) <= 64
        and (not cmd.poor_registration_no or cmd.role == ROLE.FARMER)
        and _valid_bank_codes(cmd.bank_code, cmd.branch_code)
    )


def _profile_digest(cmd: RegisterParticipant) -> str:
    """What a repeat of a registration must have in common with it: the profile, not the id or key."""
    profile = (int(cmd.role), cmd.name, cmd.id_number_masked, cmd.bank_account, cmd.poor_registration_no,
               cmd.bank_code, cmd.branch_code)
    return hashlib.blake2b(_ENCODER.encode(profile), digest_size=16).hexdigest()


def _valid_bank_codes(bank_code: str, branch_code: str) -> bool:
    """A bank code of 3 ASCII digits and a branch code of 12 that starts with it; either may be left empty,
    but not the bank of a given branch."""
    if bank_code and not (len(bank_code) == 3 and bank_code.isascii() and bank_code.isdigit()):
        return False
    if branch_code and not (len(branch_code) == 12 and branch_code.isascii() and branch_code.isdigit()):
        return False
    return not branch_code or branch_code[:3] == bank_code
