namespace AutoPrune;

/// <summary>
/// One turn; a user turn's text holds one <c>&lt;image&gt;</c> placeholder per image, in the order of
/// <see cref="VisionRequest.Images"/>. Where they stand in the text does not matter: the prompt puts a turn's images
/// where the checkpoint's chat template does (LLaVA-1.5 and LLaVA-NeXT: first, each followed by a newline, then the text).
/// </summary>
public sealed record ConversationTurn(TurnRole Role, string Text);
