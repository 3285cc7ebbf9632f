"""Voice: prepare a speaker's dataset, train an offline voice model, convert speech to it."""

from reenact.voice.world import TrainConfig, VoiceModel, convert_audio, convert_voice, train_voice

__all__ = ["TrainConfig", "VoiceModel", "convert_audio", "convert_voice", "train_voice"]
