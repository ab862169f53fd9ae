"""Small HTTP helpers shared by the clients (IMDS, Kubernetes)."""

from __future__ import annotations

import aiohttp


class BodyTooLarge(Exception):
    pass


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as it passes ``limit`` bytes."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"answer larger than {limit} bytes")
    return bytes(body)
