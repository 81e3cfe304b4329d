"""A small letsfrag bot: ``!ping <n>`` answers ``pong <n>``, a member who joins is welcomed in the guild's
system channel; every cluster serves a ``stats`` RPC.

Start it under a supervisor (``bot.module: examples.bot`` in a checkout; it ships in the package as
``letsfrag.samples.bot``, the module the sample configs name): shards, token, Redis and the Discord URLs come
from the environment the supervisor sets. Ask all clusters at once from anywhere with
``await RpcClient(redis_url).broadcast("stats")``.
"""

import discord

from letsfrag import ClusterShardClient

intents = discord.Intents.default()
intents.message_content = True
intents.members = True  # member joins (privileged: enable "Server Members Intent" for the real bot)
client = ClusterShardClient(intents=intents, chunk_guilds_at_startup=False)
messages = 0


@client.event
async def on_message(message: discord.Message) -> None:
    global messages
    if message.author.bot:
        return
    messages += 1
    if message.content.startswith("!ping "):
        await message.reply(f"pong {message.content.split()[1]}")


@client.event
async def on_member_join(member: discord.Member) -> None:
    channel = member.guild.system_channel
    if channel is not None:
        await channel.send(f"welcome {member.name}")


@client.cluster.handler("stats")
async def stats() -> dict[str, int]:
    return {"cluster": client.cluster.id, "guilds": len(client.guilds), "messages": messages}


if __name__ == "__main__":
    client.run()
