"""Per-turn reward terms (potential-based shaping) reach PPO's token-level rewards: each turn's
term lands on that turn's last policy token, and the episode's end gets the rest of the reward."""

import pytest
from gates import TRAIN_INSTALL, require_module

torch = require_module("torch", TRAIN_INSTALL)

from agentgym.env import AgentEnv  # noqa: E402
from agentgym.rewards import PerTurn, Reward, Rubric, potential_shaping  # noqa: E402
from agentgym.tokens import TokenSequence  # noqa: E402
from agentgym.trainers import ppo  # noqa: E402
from agentgym.trainers.config import load_config  # noqa: E402
from agentgym.trainers.smoke import DigitEnv, digit_share  # noqa: E402
from agentgym.trajectory_io import from_json, to_json  # noqa: E402
from agentgym.types import Task, Trajectory, Turn  # noqa: E402

SHAPING_WEIGHT = 0.5


def turn(index: int, completion: int) -> Turn:
    return Turn(index=index, assistant={"role": "assistant", "content": "x"},
                prompt_token_ids=(1,), completion_token_ids=(5,) * completion,
                logprobs=(0.0,) * completion)


def test_turn_ends_are_each_turns_last_policy_token():
    # turn 0: 3 policy tokens, 2 env tokens, turn 1: 2 policy tokens, 1 env token, turn 2: 1
    sequence = TokenSequence((1,), (9,) * 9, (1, 1, 1, 0, 0, 1, 1, 0, 1), (0.0,) * 9, (0,) * 3)
    assert ppo.turn_ends(sequence, [3, 2, 1]) == [2, 6, 8]
    with pytest.raises(ValueError, match="do not fit"):
        ppo.turn_ends(sequence, [3, 2, 2])


def test_turn_reward_tokens_place_each_term_on_its_turn():
    sequences = [TokenSequence((1,), (9,) * 6, (1, 1, 0, 1, 1, 1), (0.0,) * 6, (0, 0)),
                 TokenSequence((1,), (9,) * 3, (1, 1, 1), (0.0,) * 3, (0,))]
    trajectories = [Trajectory("e", "a", (), turns=(turn(0, 2), turn(1, 3)), reward=1.0,
                               turn_rewards=(0.25, -0.5)),
                    Trajectory("e", "b", (), turns=(turn(0, 3),), reward=0.0)]
    tokens = ppo.turn_reward_tokens(sequences, trajectories, 7, torch.device("cpu"))
    assert torch.equal(tokens, torch.tensor([[0.0, 0.25, 0.0, 0.0, 0.0, -0.5, 0.0],
                                             [0.0] * 7]))
    plain = [Trajectory("e", "b", (), turns=(turn(0, 3),), reward=0.0)]
    assert ppo.turn_reward_tokens(sequences[1:], plain, 3, torch.device("cpu")) is None
    # turns 0 and 2 kept (turn 1 was another level's, hierarchical training): its term goes
    # to the last trained turn before it
    partial = [Trajectory("e", "a", (), turns=(turn(0, 2), turn(2, 3)),
                          turn_rewards=(0.25, 1.0, -0.5))]
    tokens = ppo.turn_reward_tokens(sequences[:1], partial, 6, torch.device("cpu"))
    assert torch.equal(tokens, torch.tensor([[0.0, 1.25, 0.0, 0.0, 0.0, -0.5]]))


def test_token_rewards_add_the_turn_terms_to_the_score_and_kl():
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0]])
    kl = torch.full((1, 5), 2.0)
    turns = torch.tensor([[0.0, 0.25, 0.0, 0.0, -0.5]])
    rewards = ppo.token_rewards(torch.tensor([1.0]), mask, kl, kl_coef=0.1, turn_rewards=turns)
    assert torch.allclose(rewards, torch.tensor([[-0.2, 0.05, 0.0, -0.2, 0.3]]))


async def test_the_rubric_records_weighted_discounted_terms_per_turn():
    messages = ({"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"},
                {"role": "user", "content": "r"}, {"role": "assistant", "content": "b"})
    trajectory = Trajectory(env_id="e", task_id="t", messages=messages, terminated=True)
    task = Task(id="t", prompt=(messages[0],))

    def potential(state, task):  # how many messages so far
        return float(len(state))

    rubric = Rubric([Reward("main", lambda t, task: 2.0),
                     Reward("shaping", potential_shaping(potential, gamma=0.5), weight=0.5),
                     Reward("logged", potential_shaping(potential), weight=0.0)])
    score = await rubric.score(trajectory, task)
    # F_0 = 0.5 * 3 - 1 = 0.5, F_1 = 0.5 * 0 - 3 = -3 (terminal: Phi = 0); terms gamma^k F_k
    assert score.turn_rewards == pytest.approx((0.5 * 0.5, 0.5 * 0.5 * -3.0))
    assert score.reward == pytest.approx(2.0 + sum(score.turn_rewards))
    assert score.components["shaping"] == pytest.approx(0.5 - 1.5)
    assert isinstance(PerTurn([1.0, 2.0]), float) and PerTurn([1.0, 2.0]).terms == (1.0, 2.0)
    kept = Trajectory(env_id="e", task_id="t", messages=messages, reward=score.reward,
                      turn_rewards=score.turn_rewards)
    assert from_json(to_json(kept)) == kept


# --- one PPO step on a shaped two-turn env -------------------------------------------------

def reply_length(state, task) -> float:
    """Phi: the latest reply's length in tens of characters (0 before the first)."""
    replies = [m.get("content") or "" for m in state if m.get("role") == "assistant"]
    return len(replies[-1]) / 10 if replies else 0.0


class ShapedDigitEnv(DigitEnv):
    """DigitEnv over two turns ("Again."), with potential-based shaping by reply length."""

    def __init__(self, **kwargs):
        AgentEnv.__init__(self, max_turns=2, **kwargs)

    async def on_reply(self, reply):
        return [{"role": "user", "content": "Again."}] if len(self._turns) == 1 else None

    @property
    def rubric(self) -> Rubric:
        return Rubric([Reward("digit_share", digit_share),
                       Reward("shaping", potential_shaping(reply_length),
                              weight=SHAPING_WEIGHT)])


def test_a_ppo_step_gives_each_turn_its_shaping_term(tmp_path, monkeypatch):
    seen = {}
    real_batch, real_prepare = ppo.episode_batch, ppo.prepare

    def episode_batch(episodes, s):
        seen["episodes"] = episodes
        seen["batch"] = real_batch(episodes, s)
        return seen["batch"]

    def prepare(*args):
        seen["targets"] = real_prepare(*args)
        return seen["targets"]

    monkeypatch.setattr(ppo, "episode_batch", episode_batch)
    monkeypatch.setattr(ppo, "prepare", prepare)
    # gamma = lam = 1, no KL, and V = 0 (the head starts at zero): the return of each token is
    # the sum of the token rewards from it to the end
    config = load_config(ppo.PPOConfig, "trainers/configs/ppo_smoke.yaml", {
        "env_id": f"{__name__}:ShapedDigitEnv", "max_steps": 1, "tasks_per_step": 6,
        "kl_coef": 0.0, "num_ppo_epochs": 1, "num_mini_batches": 1, "report_to": [],
        "output_dir": str(tmp_path)})
    ppo.train(config)
    batch, shaping, drift = seen["batch"]
    episodes = seen["episodes"]
    assert drift == 0 and len(batch) == len(episodes) == 12
    assert shaping is not None
    checked = 0
    for row, episode in enumerate(episodes):
        replies = [t.assistant.get("content") or "" for t in episode.turns]
        assert len(replies) == 2 and episode.terminated
        phi = len(replies[0]) / 10
        # F_0 = Phi(s_1) - Phi(s_0) = phi, F_1 = Phi(terminal) - Phi(s_1) = -phi
        assert episode.turn_rewards == pytest.approx((SHAPING_WEIGHT * phi,
                                                      -SHAPING_WEIGHT * phi))
        score = episode.reward - sum(episode.turn_rewards)
        assert float(batch.advantages[row]) == pytest.approx(score, abs=1e-6)
        sequence = ppo.to_sequences([episode], [0])[0][0]
        ends = ppo.turn_ends(sequence, [len(t.completion_token_ids) for t in episode.turns])
        expected = torch.zeros(batch.mask.shape[1])
        for position, term in zip(ends, episode.turn_rewards, strict=True):
            expected[position] = term
        assert torch.allclose(shaping[row], expected)
        returns = seen["targets"].returns[row]
        first_turn, second_turn = ends[0], ends[1]
        assert float(returns[first_turn]) == pytest.approx(episode.reward, abs=1e-5)
        assert float(returns[second_turn]) == pytest.approx(score + episode.turn_rewards[1],
                                                            abs=1e-5)
        checked += phi > 0
    assert checked > 0  # the check above saw real terms
