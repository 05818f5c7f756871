namespace AutoPrune;

/// <summary>One turn; a user turn's text holds an <c>&lt;image&gt;</c> placeholder where each of its images goes.</summary>
public sealed record ConversationTurn(TurnRole Role, string Text);
