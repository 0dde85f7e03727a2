"""DNS messages in and out: a query's bytes to the response's bytes (dnspython does the wire
format), with the rules a server owes its clients whatever they send:

- fewer than 12 bytes (no header to answer to), or a message that is itself a response: no
  answer (a reply would feed reflection loops);
- a header followed by bytes that do not parse, trailing junk, or not exactly one question:
  FORMERR, with the query's id and opcode and nothing else;
- an opcode other than QUERY: NOTIMP; EDNS version above 0: BADVERS; class other than IN, zone
  transfers, and names outside the cluster domain: REFUSED (this server forwards nowhere);
- UDP answers fit 512 bytes, or the client's EDNS payload size (at most 4096): larger ones go
  out truncated with TC set, so the client retries over TCP; TCP answers up to 65535 bytes.

``Responder`` keeps the answers it built by the query's bytes after the id, until the records
change, so a repeated question costs a dictionary lookup instead of a parse and a render. An
answer of several A records (a headless Service's pods) is kept in up to ``ROTATIONS`` orders
served in turn, as CoreDNS' loadbalance plugin shuffles them: resolvers mostly take the first
address, so one fixed order would send every client to the same pod. (dnspython shuffles at each
render; a kept render would freeze one random order, so renders here keep the order given.)
"""

from __future__ import annotations

import struct

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from node.dns.records import Records

HEADER = 12
UDP_MIN = 512
UDP_MAX = 4096  # the largest EDNS payload we honour (RFC 6891 suggests 4096; DNS Flag Day 1232)
TCP_MAX = 65535
CACHE_MAX = 20_000
ROTATIONS = 8


def header_only(wire: bytes, rcode: int) -> bytes:
    """A bare response to ``wire``'s header: same id, opcode and RD, QR set, ``rcode``, no
    sections (for a query too broken to echo its question)."""
    qid, flags = struct.unpack("!HH", wire[:4])
    flags = (flags & 0x7900) | 0x8000 | (rcode & 0xF)  # keep opcode (0x7800) and RD (0x0100)
    return struct.pack("!HHHHHH", qid, flags, 0, 0, 0, 0)


class Responder:
    def __init__(self, records: Records) -> None:
        self.records = records
        self._cache: dict[tuple[bytes, int], list] = {}  # key -> [next turn, answer bytes after the id...]
        self._generation = -1
        self.stats = {"queries": 0, "formerr": 0, "dropped": 0, "refused": 0, "truncated": 0,
                      "cache_hits": 0}

    def respond(self, wire: bytes, limit: int) -> bytes | None:
        """The response to ``wire`` received over a transport allowing ``limit`` bytes
        (UDP_MIN for UDP, TCP_MAX for TCP), or None for a packet to drop."""
        self.stats["queries"] += 1
        if len(wire) < HEADER or wire[2] & 0x80:
            self.stats["dropped"] += 1
            return None
        gen = self.records.generation
        if gen != self._generation:
            self._cache.clear()
            self._generation = gen
        key = (wire[2:], limit)
        cached = self._cache.get(key)
        if cached is not None:
            self.stats["cache_hits"] += 1
            turn = cached[0]
            if len(cached) > 2:
                cached[0] = turn % (len(cached) - 1) + 1
            return wire[:2] + cached[turn]
        outs, cacheable = self._build(wire, limit)
        if not outs:
            return None
        if cacheable:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[key] = [2 if len(outs) > 1 else 1, *(o[2:] for o in outs)]
        return outs[0]

    def _build(self, wire: bytes, limit: int) -> tuple[list[bytes], bool]:
        """The response's bytes (several orders of its A records for a rotating answer; none
        for a packet to drop) and whether it may be kept for the same query bytes."""
        try:
            query = dns.message.from_wire(wire)
        except dns.message.ShortHeader:
            self.stats["dropped"] += 1
            return [], False
        except (dns.exception.DNSException, ValueError, UnicodeError):
            self.stats["formerr"] += 1
            return [header_only(wire, dns.rcode.FORMERR)], True
        if query.opcode() != dns.opcode.QUERY:
            return [header_only(wire, dns.rcode.NOTIMP)], True
        if len(query.question) != 1 or query.answer or query.authority:
            self.stats["formerr"] += 1
            return [header_only(wire, dns.rcode.FORMERR)], True
        response = dns.message.make_response(query, our_payload=UDP_MAX)
        response.flags &= ~dns.flags.RA  # no recursion here
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
            return [response.to_wire()], True
        q = query.question[0]
        answer = None
        if q.rdclass == dns.rdataclass.IN and q.rdtype not in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            answer = self.records.lookup(q.name.to_text(), q.rdtype)
        if answer is None:
            self.stats["refused"] += 1
            response.set_rcode(dns.rcode.REFUSED)
            return [response.to_wire()], True
        response.set_rcode(answer.rcode)
        if answer.authoritative:
            response.flags |= dns.flags.AA
        for rrset in answer.answer:
            if rrset.name.labels != q.name.labels:
                # the answer repeats the question's name as it was asked (case included)
                rrset = rrset.copy()
                rrset.name = q.name
            response.answer.append(rrset)
        response.authority.extend(answer.authority)
        response.additional.extend(answer.additional)
        if limit < TCP_MAX:
            payload = query.payload if query.edns >= 0 else UDP_MIN
            limit = max(UDP_MIN, min(payload, UDP_MAX))
        outs = [response.to_wire(max_size=limit, prefer_truncation=True, want_shuffle=False)]
        if outs[0][2] & 0x02:  # TC
            self.stats["truncated"] += 1
        first = response.answer[0] if len(response.answer) == 1 else None
        if first is not None and first.rdtype == dns.rdatatype.A and len(first) > 1:
            rdatas = list(first)
            for turn in range(1, min(len(rdatas), ROTATIONS)):
                order = rdatas[turn:] + rdatas[:turn]
                response.answer[0] = dns.rrset.from_rdata_list(first.name, first.ttl, order)
                outs.append(response.to_wire(max_size=limit, prefer_truncation=True, want_shuffle=False))
        return outs, True
