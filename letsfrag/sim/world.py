"""The simulated bot's world: its user, application, guilds, channels and members (pure data)."""

from __future__ import annotations

from dataclasses import dataclass, field

from letsfrag.sim import payloads
from letsfrag.sim.payloads import Json

BOT_USER_ID = payloads.object_id(1)
APPLICATION_ID = BOT_USER_ID
OWNER_USER_ID = payloads.object_id(2)
_FIRST_FREE_OBJECT = 16
_EVERYONE_PERMISSIONS = 1_071_698_660_929  # view/send/read history/... (Discord's default @everyone)
_BOT_ROLE_PERMISSIONS = 8  # administrator


@dataclass(frozen=True, slots=True)
class Guild:
    """One simulated guild."""

    id: int
    index: int
    shard_id: int
    name: str
    text_channel_id: int
    bot_role_id: int


@dataclass(frozen=True, slots=True)
class Member:
    """One non-bot user present in every guild."""

    id: int
    username: str


@dataclass
class World:
    """Guilds spread over ``shard_count`` shards (guild ``i`` on shard ``i % shard_count``).

    ``shard_count`` is the configured count; the guilds of a shard of any other count are found by Discord's
    rule too (:meth:`guild_ids_for_shard` with ``num_shards``).
    """

    shard_count: int
    members_per_guild: int
    bot_name: str = "letsfrag-sim-bot"
    guilds: dict[int, Guild] = field(default_factory=dict)
    by_shard: dict[int, list[int]] = field(default_factory=dict)
    by_channel: dict[int, int] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    _next_object: int = _FIRST_FREE_OBJECT
    _guild_cache: dict[tuple[int, bool], str] = field(default_factory=dict)
    #: shard count other than ``shard_count`` -> shard id -> guild ids (built on first use, kept up to date)
    _by_count: dict[int, dict[int, list[int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bot_user: Json = payloads.user(BOT_USER_ID, self.bot_name, bot=True)
        self.owner_user: Json = payloads.user(OWNER_USER_ID, "sim-owner")
        self.members = [Member(self._allocate(), f"user{n}") for n in range(self.members_per_guild)]
        self._member_users: dict[int, Json] = {m.id: payloads.user(m.id, m.username) for m in self.members}

    def _allocate(self) -> int:
        value = payloads.object_id(self._next_object)
        self._next_object += 1
        return value

    # --- guilds -----------------------------------------------------------------------------------
    def add_guilds(self, count: int) -> list[Guild]:
        """Create ``count`` more guilds, continuing the round-robin over shards."""
        created = []
        for _ in range(count):
            index = len(self.guilds)
            guild_id = payloads.guild_id_for(index, self.shard_count)
            guild = Guild(
                id=guild_id,
                index=index,
                shard_id=payloads.shard_for(guild_id, self.shard_count),
                name=f"Guild {index}",
                text_channel_id=self._allocate(),
                bot_role_id=self._allocate(),
            )
            self.guilds[guild_id] = guild
            self.by_shard.setdefault(guild.shard_id, []).append(guild_id)
            self.by_channel[guild.text_channel_id] = guild_id
            for count, shards in self._by_count.items():
                shards.setdefault(payloads.shard_for(guild_id, count), []).append(guild_id)
            created.append(guild)
        return created

    def _shards_of(self, num_shards: int | None) -> dict[int, list[int]]:
        if num_shards is None or num_shards == self.shard_count:
            return self.by_shard
        shards = self._by_count.get(num_shards)
        if shards is None:
            shards = {}
            for guild_id in self.guilds:
                shards.setdefault(payloads.shard_for(guild_id, num_shards), []).append(guild_id)
            self._by_count[num_shards] = shards
        return shards

    def guild_ids_for_shard(self, shard_id: int, num_shards: int | None = None) -> list[int]:
        """Guild ids owned by ``shard_id`` of ``num_shards`` shards (default: the configured count), in creation
        order."""
        return list(self._shards_of(num_shards).get(shard_id, ()))

    def guild_count(self, shard_id: int, num_shards: int | None = None) -> int:
        """How many guilds ``shard_id`` of ``num_shards`` shards (default: the configured count) holds."""
        return len(self._shards_of(num_shards).get(shard_id, ()))

    def member_user(self, user_id: int) -> Json:
        """The user object of a simulated member."""
        return self._member_users[user_id]

    def member_payload(self, guild: Guild, user_id: int) -> Json:
        """The member object of ``user_id`` (a simulated member or the bot) in ``guild``."""
        if user_id == BOT_USER_ID:
            return payloads.member(self.bot_user, [guild.bot_role_id])
        return payloads.member(self._member_users[user_id], [])

    def guild_json(self, guild_id: int, *, all_members: bool) -> str:
        """The encoded GUILD_CREATE body; members list everyone only with ``all_members``.

        Like Discord without the presences intent, the default lists only the bot itself, so a client
        with the members intent asks for the rest with op 8.
        """
        key = (guild_id, all_members)
        cached = self._guild_cache.get(key)
        if cached is None:
            guild = self.guilds[guild_id]
            member_ids = [BOT_USER_ID] + ([m.id for m in self.members] if all_members else [])
            roles = [
                payloads.role(guild.id, "@everyone", position=0, permissions=_EVERYONE_PERMISSIONS),
                payloads.role(guild.bot_role_id, self.bot_name, position=1, permissions=_BOT_ROLE_PERMISSIONS,
                              managed=True),
            ]
            member_count = 1 + len(self.members)
            cached = payloads.dumps(
                payloads.guild(
                    guild_id=guild.id,
                    name=guild.name,
                    owner_id=OWNER_USER_ID,
                    channel_id=guild.text_channel_id,
                    roles=roles,
                    members=[self.member_payload(guild, uid) for uid in member_ids],
                    member_count=member_count,
                    large=member_count >= 250,
                )
            )
            self._guild_cache[key] = cached
        return cached

    def query_members(
        self, guild: Guild, *, query: str | None, user_ids: list[int] | None, limit: int
    ) -> tuple[list[Json], list[str]]:
        """Answer a REQUEST_GUILD_MEMBERS: the matching member objects and the user ids not found."""
        everyone = [BOT_USER_ID] + [m.id for m in self.members]
        names = {BOT_USER_ID: self.bot_name} | {m.id: m.username for m in self.members}
        not_found: list[str] = []
        if user_ids:
            known = set(everyone)
            chosen = [u for u in user_ids if u in known]
            not_found = [str(u) for u in user_ids if u not in known]
        else:
            prefix = (query or "").lower()
            chosen = [u for u in everyone if names[u].lower().startswith(prefix)]
        if limit > 0:
            chosen = chosen[:limit]
        return [self.member_payload(guild, u) for u in chosen], not_found


def recommended_shards(guilds: int, guilds_per_shard: int, max_concurrency: int) -> int:
    """The shard count ``/gateway/bot`` recommends: ``ceil(guilds / guilds_per_shard)`` (at least 1), rounded up
    to a multiple of ``max_concurrency`` (Discord recommends about one shard per 1,000 guilds)."""
    if guilds_per_shard < 1 or max_concurrency < 1:
        raise ValueError("guilds_per_shard and max_concurrency must be at least 1")
    shards = max(1, -(-guilds // guilds_per_shard))
    return -(-shards // max_concurrency) * max_concurrency
