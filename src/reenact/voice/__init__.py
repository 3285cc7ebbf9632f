"""Voice: prepare a speaker's dataset, train a voice model, convert speech to it.

Modules: dataset (prepare), world (offline WORLD backend), content + sovits + sovits_train + sovits_infer
(so-vits-svc 4.x backend), convert (either backend by model path), features (WORLD analysis helpers).
"""
