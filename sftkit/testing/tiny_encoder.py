"""A tiny local text encoder for tests (no downloads): a BERT-like model with random weights and a WordPiece
tokenizer trained on the spot, loadable by sftkit.distill.semdedup.HFEncoder like any local model directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

TINY_CORPUS = """\
请说明办理学生证补办的流程。补办学生证需要到学院办公室领取申请表，填写后交辅导员签字，再到教务处办理。
选课系统通常在每学期开学前两周开放，学生需要登录教务系统，按照培养方案选择必修课和选修课。
图书馆周末晚上九点闭馆，节假日另行通知。食堂早上六点半开门，晚上七点停止供应。
保险合同是投保人与保险人约定保险权利义务关系的协议。被保险人发生保险事故后应及时通知保险公司。
自然语言处理研究如何让计算机理解和生成人类语言。大语言模型通过监督微调学会回答问题。
The library closes at nine on weekends. Students register for courses two weeks before term starts.
"""


def build_tiny_encoder(out_dir: str | Path, corpus: Sequence[str] = (), *, seed: int = 0, hidden: int = 32,
                       vocab_size: int = 800) -> str:
    """A BERT-like encoder with random weights and a WordPiece tokenizer trained here (Chinese characters are
    single tokens, as in BERT), saved with save_pretrained so `HFEncoder(out_dir)` loads it like any local
    model. Its embeddings carry no meaning: identical texts embed identically, which is what tests need."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator([*TINY_CORPUS.splitlines(), *corpus], trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id),
                                                                                     ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=hidden * 2, max_position_embeddings=512, initializer_range=0.5)
    BertModel(cfg).save_pretrained(out)
    return str(out)
