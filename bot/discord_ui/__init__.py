"""The Discord face: client, cogs, views, actions, delivery, payload checks, replies.

Never imports ``torch``, ``diffusers`` or ``bot.web``."""
