"""A small letsfrag bot: ``!ping <n>`` answers ``pong <n>``; every cluster serves a ``stats`` RPC.

Start it under a supervisor (``bot.module: examples.bot`` in a checkout; it ships in the package as
``letsfrag.samples.bot``, the module the sample configs name): shards, token, Redis and the Discord URLs come
from the environment the supervisor sets. Ask all clusters at once from anywhere with
``await RpcClient(redis_url).broadcast("stats")``.
"""

import discord

from letsfrag import ClusterShardClient

intents = discord.Intents.default()
intents.message_content = True
client = ClusterShardClient(intents=intents)
messages = 0


@client.event
async def on_message(message: discord.Message) -> None:
    global messages
    if message.author.bot:
        return
    messages += 1
    if message.content.startswith("!ping "):
        await message.reply(f"pong {message.content.split()[1]}")


@client.cluster.handler("stats")
async def stats() -> dict[str, int]:
    return {"cluster": client.cluster.id, "guilds": len(client.guilds), "messages": messages}


if __name__ == "__main__":
    client.run()
