"""The example bot answering slowly (a test program for the replay chaos tests): each ``!ping <n>`` and each member
join is answered ``SLOW_SECONDS`` (default 1.5) after it arrived, so at 20 events/s a few dozen handlers are always
running; a host killed or frozen now stops some of them between their claim and their reply.

Environment (the host config's ``bot.env``): ``SLOW_SECONDS``.
"""

from __future__ import annotations

import asyncio
import os
import runpy
from pathlib import Path

import discord

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "bot.py"
SLOW = float(os.environ.get("SLOW_SECONDS", "1.5"))

namespace = runpy.run_path(str(EXAMPLE), run_name="slow_bot")
client = namespace["client"]


@client.event
async def on_message(message: discord.Message) -> None:
    if message.author.bot or not message.content.startswith("!ping "):
        return
    await asyncio.sleep(SLOW)
    await message.reply(f"pong {message.content.split()[1]}")


@client.event
async def on_member_join(member: discord.Member) -> None:
    channel = member.guild.system_channel
    if channel is not None:
        await asyncio.sleep(SLOW)
        await channel.send(f"welcome {member.name}")


if __name__ == "__main__":
    client.run()
